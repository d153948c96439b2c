package s3backend

import (
	"context"
	"errors"
	"net"
	"syscall"
	"time"
)

// idleTimeoutDial wraps a dialer so that every connection it makes fails a
// read or a write that makes no progress for d. Go's HTTP client bounds
// the dial and the TLS handshake but nothing after: a request sent into a
// black hole (a peer that accepts and then says nothing, or stops reading
// a body) would wait for ever, and so would the upload job behind it.
func idleTimeoutDial(dial func(ctx context.Context, network, addr string) (net.Conn, error), d time.Duration, failed func(error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			if failed != nil && ctx.Err() == nil && refused(err) {
				failed(err)
			}
			return nil, err
		}
		return &idleConn{Conn: c, idle: d}, nil
	}
}

// idleConn moves its deadline forward before every read and write, so the
// deadline bounds a stall, not the length of a transfer.
type idleConn struct {
	net.Conn
	idle time.Duration
}

func (c *idleConn) Read(p []byte) (int, error) {
	if err := c.Conn.SetReadDeadline(time.Now().Add(c.idle)); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

func (c *idleConn) Write(p []byte) (int, error) {
	if err := c.Conn.SetWriteDeadline(time.Now().Add(c.idle)); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

// refused reports whether a dial error says the host will not answer at
// all: nothing listens there, or there is no route to it.
func refused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH)
}
