//go:build !linux

package udpmux

import (
	"context"
	"errors"
)

// listenKernel is Linux-only: SO_ATTACH_REUSEPORT_CBPF does not exist
// elsewhere, so other systems always use the fallback.
func listenKernel(context.Context, string, string) (*Mux, error) {
	return nil, &kernelUnsupportedError{cause: errors.ErrUnsupported}
}
