//go:build !linux

package netstack

import (
	"errors"
	"syscall"
)

// poller is Linux-only (epoll); elsewhere newPoller fails and every flow
// keeps a reader goroutine, as a custom Dialer's connections do.
type poller struct{}

type watched interface{ ready() }

func newPoller() (*poller, error) { return nil, errors.New("netstack: no epoll") }

func (p *poller) add(syscall.RawConn, watched, *uint32) error { return errors.ErrUnsupported }
func (p *poller) arm(syscall.RawConn, uint32) error           { return errors.ErrUnsupported }
func (p *poller) remove(syscall.RawConn, uint32)              {}
func (p *poller) close()                                      {}
