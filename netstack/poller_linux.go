package netstack

import (
	"errors"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// poller watches the host sockets of idle flows for readability in one
// epoll set, so an idle flow parks no goroutine: a parked reader costs its
// stack (2 KiB, grown to 4 KiB and more once data has moved) and its g,
// about 40 % of an idle flow's memory (issue 14; TestFlowMemory measures
// it). One goroutine, parked in the Go runtime's poller on the set itself,
// takes the events of all flows (epoll_wait(2)) and only dispatches: on readability it calls the flow's ready, which starts a
// goroutine for the burst of data (tcpFlow.ready) and returns.
//
// Each socket is registered EPOLLONESHOT: an event disarms it, so one
// burst runs at a time per flow, and the burst re-arms it (arm) when the
// socket has no more data. Level-triggered, so data or an EOF that arrived
// before the re-arm reports at once.
//
// The epoll set holds the socket's descriptor beside the Go runtime's own
// poller (a descriptor may be in several epoll sets); reads still go
// through syscall.RawConn, so they never touch a descriptor that Close has
// released. A descriptor leaves the set when the flow ends (remove) or
// when the socket closes (the kernel drops it with the last reference), so
// a stale event can only name a flow id that is gone, and is ignored.
type poller struct {
	epfd int
	// file is epfd as an *os.File, so run waits for the set's readiness
	// in the Go runtime's poller (an epoll set is itself pollable) like
	// any socket's reader: no thread blocks in epoll_wait, and a wake-up
	// costs what the reader goroutine it replaces cost. Closing it ends
	// run.
	file *os.File

	mu    sync.Mutex
	flows map[uint32]watched
	next  uint32 // last id handed out; never 0

	done chan struct{}
}

// watched is what a poller wakes: ready must not block.
type watched interface{ ready() }

// pollEvents is how many events one epoll_wait returns at most: enough
// that a burst of 19,000 flows becoming readable at once costs a few
// hundred calls, small enough to live on the waiting goroutine's stack.
const pollEvents = 128

func newPoller() (*poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	// Non-blocking, or os.NewFile would not register it with the
	// runtime's poller (epoll_wait itself is called with timeout 0).
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, err
	}
	f := os.NewFile(uintptr(epfd), "netstack-epoll")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	p := &poller{epfd: epfd, file: f, flows: make(map[uint32]watched), done: make(chan struct{})}
	go p.run(rc)
	return p, nil
}

func (p *poller) run(rc syscall.RawConn) {
	defer close(p.done)
	var evs [pollEvents]unix.EpollEvent
	// The runtime watches the set edge-triggered: take every event that
	// is ready before waiting again (a later event is a new edge).
	_ = rc.Read(func(uintptr) bool {
		for {
			n, err := unix.EpollWait(p.epfd, evs[:], 0)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return true // EBADF etc.: the set is gone
			}
			for i := range n {
				p.mu.Lock()
				w := p.flows[uint32(evs[i].Fd)]
				p.mu.Unlock()
				if w != nil {
					w.ready()
				}
			}
			if n < len(evs) {
				return false // wait for the next edge
			}
		}
	}) // returns once close closes the file
}

// errNotWatched is add's answer when the socket's descriptor is gone.
var errNotWatched = errors.New("netstack: socket not watched")

// add watches rc's descriptor for w, armed. It stores w's id (never 0)
// in *id before the first event can reach w.
func (p *poller) add(rc syscall.RawConn, w watched, id *uint32) error {
	p.mu.Lock()
	for {
		p.next++
		if _, used := p.flows[p.next]; !used && p.next != 0 {
			break
		}
	}
	*id = p.next
	p.flows[p.next] = w
	p.mu.Unlock()
	if err := p.ctl(rc, unix.EPOLL_CTL_ADD, *id); err != nil {
		p.mu.Lock()
		delete(p.flows, *id)
		p.mu.Unlock()
		*id = 0
		return err
	}
	return nil
}

// arm re-arms id's descriptor after a burst. An error means the socket
// is closed (or closing).
func (p *poller) arm(rc syscall.RawConn, id uint32) error {
	return p.ctl(rc, unix.EPOLL_CTL_MOD, id)
}

// remove stops watching id; events already read for it are ignored.
func (p *poller) remove(rc syscall.RawConn, id uint32) {
	p.mu.Lock()
	delete(p.flows, id)
	p.mu.Unlock()
	var ev unix.EpollEvent
	_ = rc.Control(func(fd uintptr) { // fails once the socket is closed, which removed it already
		_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), &ev)
	})
}

func (p *poller) ctl(rc syscall.RawConn, op int, id uint32) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLONESHOT, Fd: int32(id)}
	var err error
	if cerr := rc.Control(func(fd uintptr) { err = unix.EpollCtl(p.epfd, op, int(fd), &ev) }); cerr != nil {
		return errNotWatched
	}
	return err
}

// close ends run and releases the epoll set; call it once no flow uses
// the poller.
func (p *poller) close() {
	p.file.Close()
	<-p.done
}
