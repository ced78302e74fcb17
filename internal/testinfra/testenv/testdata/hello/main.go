// Command hello is BuildBinary's test subject: it prints its network
// namespace's interfaces' count and a greeting, then exits.
package main

import (
	"fmt"
	"net"
)

func main() {
	ifs, _ := net.Interfaces()
	fmt.Printf("hello from a namespace with %d interfaces\n", len(ifs))
}
