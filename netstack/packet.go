package netstack

import "sync"

// Packet is one outbound IP packet for a client, in a pooled buffer that
// reserves the port's headroom in front of the IP packet.
type Packet struct {
	buf  []byte
	n    int // headroom + packet length
	head int // headroom
	pool *sync.Pool
}

// Frame returns headroom + IP packet, contiguous. The caller fills the first
// headroom bytes (its frame header) in place.
func (pk *Packet) Frame() []byte { return pk.buf[:pk.n] }

// IP returns the IP packet alone, without the headroom. A transport whose
// frame header is shorter than the port's headroom (DTLS's 1 type byte
// against CSTP's 8) writes its header into IP()'s last bytes of headroom:
// Frame()[len(Frame())-len(IP())-h:].
func (pk *Packet) IP() []byte { return pk.buf[pk.head:pk.n] }

// Headroom returns the bytes reserved in front of IP() (the port's).
func (pk *Packet) Headroom() int { return pk.head }

// Release returns the packet to its pool. The packet and its Frame must not
// be used afterwards. Releasing twice is a no-op.
func (pk *Packet) Release() {
	p := pk.pool
	if p == nil {
		return
	}
	pk.pool = nil
	pk.n, pk.head = 0, 0
	p.Put(pk)
}

// smallFrame is the small size class: ACKs and 1500-MTU packets (plus
// headroom) fit, so big-MTU links do not pin 16 KiB per queued ACK.
const smallFrame = 2048

type packetPools struct {
	small, big sync.Pool
	bigSize    int
}

func (pp *packetPools) init(mtu int) {
	pp.bigSize = MaxHeadroom + mtu
	pp.small.New = func() any { return &Packet{buf: make([]byte, smallFrame)} }
	pp.big.New = func() any { return &Packet{buf: make([]byte, pp.bigSize)} }
}

// get returns a packet whose buffer holds size bytes, or nil if too big.
func (pp *packetPools) get(size int) *Packet {
	var p *sync.Pool
	switch {
	case size <= smallFrame:
		p = &pp.small
	case size <= pp.bigSize:
		p = &pp.big
	default:
		return nil
	}
	pk := p.Get().(*Packet)
	pk.pool = p
	pk.n = size
	return pk
}
