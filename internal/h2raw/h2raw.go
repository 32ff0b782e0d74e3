// Package h2raw speaks just enough HTTP/2 to a gRPC server to behave as a
// hostile client would — header blocks that never end, more streams than
// allowed, connections that never say anything — so tests and benchmarks
// can check that the server bounds what such clients cost.
package h2raw

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Conn is one client connection that has sent the HTTP/2 preface and its
// SETTINGS. One goroutine may read (Next, AwaitClose) while another writes.
type Conn struct {
	net.Conn
	fr  *http2.Framer
	wmu sync.Mutex // serialises the framer's writes
}

// Dial connects to addr over plaintext TCP, from localIP if it is not nil,
// and sends the client preface and an empty SETTINGS frame.
func Dial(ctx context.Context, addr string, localIP net.IP) (*Conn, error) {
	d := net.Dialer{}
	if localIP != nil {
		d.LocalAddr = &net.TCPAddr{IP: localIP}
	}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &Conn{Conn: nc, fr: http2.NewFramer(nc, nc)}
	if _, err := nc.Write([]byte(http2.ClientPreface)); err != nil {
		_ = nc.Close()
		return nil, err
	}
	if err := c.write(func(fr *http2.Framer) error { return fr.WriteSettings() }); err != nil {
		_ = nc.Close()
		return nil, err
	}
	return c, nil
}

func (c *Conn) write(f func(*http2.Framer) error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return f(c.fr)
}

// grpcHeaders is the header block of a gRPC call to path, with extra
// fields appended.
func grpcHeaders(path string, extra ...hpack.HeaderField) []byte {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for _, f := range append([]hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: path}, {Name: ":authority", Value: "rotavault"},
		{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
	}, extra...) {
		_ = enc.WriteField(f)
	}
	return buf.Bytes()
}

// Call opens stream id as a gRPC call to path and sends msg (a serialized
// request message) as its only message.
func (c *Conn) Call(id uint32, path string, msg []byte) error {
	frame := make([]byte, 5+len(msg))
	frame[1], frame[2], frame[3], frame[4] = byte(len(msg)>>24), byte(len(msg)>>16), byte(len(msg)>>8), byte(len(msg))
	copy(frame[5:], msg)
	return c.write(func(fr *http2.Framer) error {
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: grpcHeaders(path), EndHeaders: true}); err != nil {
			return err
		}
		return fr.WriteData(id, true, frame)
	})
}

// CallUnfinished opens stream id as a gRPC call to path whose request
// message says it is declared bytes long, and sends only the first part of
// it (at most one frame), with extra header fields: a server that reads the message before anything
// else waits, holding a buffer for it, for as long as the stream lives.
func (c *Conn) CallUnfinished(id uint32, path string, declared, part int, extra ...hpack.HeaderField) error {
	frame := make([]byte, 5+min(part, frameSize-5))
	frame[1], frame[2], frame[3], frame[4] = byte(declared>>24), byte(declared>>16), byte(declared>>8), byte(declared)
	return c.write(func(fr *http2.Framer) error {
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: grpcHeaders(path, extra...), EndHeaders: true}); err != nil {
			return err
		}
		return fr.WriteData(id, false, frame)
	})
}

// frameSize is the largest frame payload a peer must accept without
// having raised SETTINGS_MAX_FRAME_SIZE.
const frameSize = 16 << 10

// SendUnfinishedHeaders opens stream id with a header block of total bytes
// that never ends: one header field whose value is total bytes long, sent
// in a HEADERS frame and CONTINUATION frames, without END_HEADERS. A server
// that buffers header blocks up to a large limit holds all of it. It
// returns when everything is written or the server stops reading.
func (c *Conn) SendUnfinishedHeaders(id uint32, total int) error {
	var buf bytes.Buffer
	buf.Write(grpcHeaders("/grpc.health.v1.Health/Check"))
	// A literal field without indexing, new name "x-pad": 0x00, the name
	// as a string, then the value's length as a 7-bit-prefix integer.
	buf.WriteByte(0x00)
	buf.WriteByte(5)
	buf.WriteString("x-pad")
	writeInt(&buf, 7, uint64(total))
	first := buf.Bytes()
	if err := c.write(func(fr *http2.Framer) error {
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first})
	}); err != nil {
		return err
	}
	chunk := bytes.Repeat([]byte{'a'}, frameSize)
	for sent := 0; sent < total; sent += frameSize {
		if err := c.write(func(fr *http2.Framer) error {
			return fr.WriteContinuation(id, false, chunk[:min(frameSize, total-sent)])
		}); err != nil {
			return err
		}
	}
	return nil
}

// writeInt is HPACK's integer encoding with an n-bit prefix (RFC 7541 5.1),
// the prefix byte's other bits zero.
func writeInt(buf *bytes.Buffer, n uint, v uint64) {
	limit := uint64(1)<<n - 1
	if v < limit {
		buf.WriteByte(byte(v))
		return
	}
	buf.WriteByte(byte(limit))
	v -= limit
	for v >= 128 {
		buf.WriteByte(byte(v%128 + 128))
		v /= 128
	}
	buf.WriteByte(byte(v))
}

// ErrClosed reports that the server closed the connection (EOF, reset or a
// GOAWAY).
var ErrClosed = errors.New("h2raw: the server closed the connection")

// Event is what the server said about a stream.
type Event struct {
	StreamID uint32
	// Refused: RST_STREAM with REFUSED_STREAM. Otherwise the server
	// answered (HEADERS) or reset the stream with another code (RSTCode).
	Refused bool
	RSTCode http2.ErrCode
}

// Next reads frames until one concerns a stream (response HEADERS or
// RST_STREAM), the connection ends (ErrClosed) or deadline passes.
func (c *Conn) Next(deadline time.Time) (Event, error) {
	_ = c.SetReadDeadline(deadline)
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return Event{}, err
			}
			return Event{}, fmt.Errorf("%w: %v", ErrClosed, err)
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			return Event{}, fmt.Errorf("%w: GOAWAY %v", ErrClosed, f.ErrCode)
		case *http2.RSTStreamFrame:
			return Event{StreamID: f.StreamID, Refused: f.ErrCode == http2.ErrCodeRefusedStream, RSTCode: f.ErrCode}, nil
		case *http2.HeadersFrame:
			return Event{StreamID: f.StreamID}, nil
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if err := c.write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() }); err != nil {
					return Event{}, fmt.Errorf("%w: %v", ErrClosed, err)
				}
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = c.write(func(fr *http2.Framer) error { return fr.WritePing(true, f.Data) })
			}
		}
	}
}

// AwaitClose reads until the server closes the connection (nil) or the
// deadline passes (the read's timeout error).
func (c *Conn) AwaitClose(deadline time.Time) error {
	for {
		_, err := c.Next(deadline)
		if errors.Is(err, ErrClosed) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// AwaitRefused dials addr over TCP from localIP and reports whether the
// server closed the connection before the deadline without a byte read: a
// listener refusing it. Anything else is an error.
func AwaitRefused(ctx context.Context, addr string, localIP net.IP, deadline time.Time) error {
	d := net.Dialer{}
	if localIP != nil {
		d.LocalAddr = &net.TCPAddr{IP: localIP}
	}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer nc.Close()
	_ = nc.SetReadDeadline(deadline)
	n, err := io.Copy(io.Discard, nc)
	switch {
	case err != nil && !errors.Is(err, syscall.ECONNRESET):
		return err
	case n > 0:
		return fmt.Errorf("h2raw: the connection was served (%d bytes) before it closed", n)
	}
	return nil
}
