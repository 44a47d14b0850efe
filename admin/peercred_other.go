//go:build !linux

package admin

import "net"

// peerUID reports -1, unknown, where SO_PEERCRED does not exist; the
// socket's mode (0600) alone then keeps other users out.
func peerUID(net.Conn) (int, error) { return -1, nil }
