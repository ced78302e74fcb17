// Command benchserver serves a dnsproxy.Server on a loopback address for
// scripts/dnsperf-bench.sh: UDP and TCP on one port, until SIGINT or
// SIGTERM, then prints the server's counters to stderr.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/underpass/underpass/dnsproxy"
	"golang.org/x/sys/unix"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:5300", "address to serve on (UDP and TCP)")
	upstreams := flag.String("upstream", "", "comma-separated corporate DNS servers (ip:port)")
	search := flag.String("search", "", "comma-separated search suffixes")
	sockets := flag.Int("sockets", runtime.GOMAXPROCS(0), "UDP sockets sharing the port (SO_REUSEPORT), one per core like unbound's so-reuseport")
	flag.Parse()
	split := func(s string) []string {
		if s == "" {
			return nil
		}
		return strings.Split(s, ",")
	}
	s, err := dnsproxy.New(dnsproxy.Config{Upstreams: split(*upstreams), Search: split(*search), Domains: []string{"."}})
	if err != nil {
		log.Fatal(err)
	}
	lc := net.ListenConfig{Control: reusePort}
	var pc net.PacketConn
	for i := range max(1, *sockets) {
		addr := *listen
		if i > 0 {
			addr = pc.LocalAddr().String()
		}
		p, err := lc.ListenPacket(context.Background(), "udp", addr)
		if err != nil {
			log.Fatal(err)
		}
		if i == 0 {
			pc = p
		}
		go s.ServePacket(p)
	}
	l, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		log.Fatal(err)
	}
	go s.Serve(l)
	fmt.Println("ready", pc.LocalAddr())

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second) // in-flight queries end within QueryTimeout anyway
	defer cancel()
	s.Shutdown(ctx)
	st, _ := json.Marshal(s.Stats())
	fmt.Fprintln(os.Stderr, "benchserver stats:", string(st))
}

// reusePort sets SO_REUSEPORT so several sockets share the port and the
// kernel spreads clients across them.
func reusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	return serr
}
