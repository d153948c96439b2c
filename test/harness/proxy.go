package harness

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// Proxy sits between keelfs and the S3 server. It counts requests by S3
// operation, so tests can check what a filesystem operation costs, and it
// can inject faults.
type Proxy struct {
	Endpoint string // point keelfs here

	mu     sync.Mutex
	counts map[string]int
	fault  func(op string, r *http.Request) Fault
	srv    *http.Server
}

// Fault is what the proxy does to one request. The zero value passes it
// through untouched. Delay applies first; then the first set of
// TruncateBody, Cut, Status and DropResponse.
type Fault struct {
	// Delay holds the request this long before anything else happens,
	// as a slow or overloaded endpoint would.
	Delay time.Duration
	// Status and Code answer with an S3 error without reaching the server.
	Status int
	Code   string
	// Cut resets the connection (TCP RST) without an answer. The server
	// never sees the request. A request with a body is cut off in the
	// middle of it: the proxy reads the first half, then resets. With
	// TruncateBody, the reset comes after the partial answer instead.
	Cut bool
	// DropResponse passes the request to the server, so that it takes
	// effect, and then resets the connection instead of answering: the
	// "request succeeded, answer lost" case.
	DropResponse bool
	// TruncateBody, if positive, passes the request to the server and
	// forwards the answer's status and headers (the full Content-Length
	// included) but only this many bytes of its body, then closes the
	// connection (resets it, with Cut). A body of at most this many
	// bytes passes whole.
	TruncateBody int64
}

func (f Fault) active() bool {
	return f.Delay > 0 || f.Status != 0 || f.Cut || f.DropResponse || f.TruncateBody > 0
}

// StartProxy proxies to s and stops at cleanup.
func (s *Server) StartProxy(t testing.TB) *Proxy {
	t.Helper()
	target, err := url.Parse(s.Endpoint)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	p := &Proxy{counts: make(map[string]int)}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ErrorLog = nil
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	p.Endpoint = "http://" + l.Addr().String()
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		op := Operation(r)
		p.mu.Lock()
		p.counts[op]++
		fault := p.fault
		p.mu.Unlock()
		var f Fault
		if fault != nil {
			f = fault(op, r)
		}
		if !f.active() {
			rp.ServeHTTP(w, r)
			return
		}
		if f.Delay > 0 {
			select {
			case <-time.After(f.Delay):
			case <-r.Context().Done():
				return
			}
		}
		switch {
		case f.TruncateBody > 0:
			rp.ServeHTTP(&truncatingWriter{ResponseWriter: w, left: f.TruncateBody, reset: f.Cut}, r)
		case f.Cut:
			if r.ContentLength > 0 {
				io.CopyN(io.Discard, r.Body, r.ContentLength/2)
			}
			resetConn(w)
		case f.Status != 0:
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(f.Status)
			io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>`+f.Code+`</Code><Message>injected by test</Message><RequestId>TESTFAULT</RequestId></Error>`)
		case f.DropResponse:
			rec := &discardWriter{h: http.Header{}}
			rp.ServeHTTP(rec, r)
			resetConn(w)
		default:
			rp.ServeHTTP(w, r)
		}
	})}
	go p.srv.Serve(l)
	t.Cleanup(func() { p.srv.Close() })
	return p
}

// Counts returns the requests seen per operation since the last reset.
func (p *Proxy) Counts() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]int, len(p.counts))
	for k, v := range p.counts {
		out[k] = v
	}
	return out
}

// Reset zeroes the counts.
func (p *Proxy) Reset() {
	p.mu.Lock()
	p.counts = make(map[string]int)
	p.mu.Unlock()
}

// SetFault installs a fault injector: for each request it may answer with
// an S3 error (status, code), or cut the connection. nil removes it.
func (p *Proxy) SetFault(f func(op string, r *http.Request) (status int, code string, cut bool)) {
	if f == nil {
		p.SetFaults(nil)
		return
	}
	p.SetFaults(func(op string, r *http.Request) Fault {
		status, code, cut := f(op, r)
		return Fault{Status: status, Code: code, Cut: cut}
	})
}

// SetFaults installs a fault injector that chooses a Fault for each
// request. It runs on the proxy's request goroutines, concurrently. nil
// removes it.
func (p *Proxy) SetFaults(f func(op string, r *http.Request) Fault) {
	p.mu.Lock()
	p.fault = f
	p.mu.Unlock()
}

// resetConn closes the client's connection with a TCP RST, as a crashed
// server or a middlebox would.
func resetConn(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	conn.Close()
}

// discardWriter takes a response nobody will see.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d *discardWriter) WriteHeader(int)             {}

// truncatingWriter forwards a response until left body bytes have passed,
// then ends the connection and fails the write, which makes the reverse
// proxy abandon the rest of the answer.
type truncatingWriter struct {
	http.ResponseWriter
	left  int64
	reset bool
	done  bool
}

var errTruncated = errors.New("harness: body truncated on purpose")

func (t *truncatingWriter) Write(b []byte) (int, error) {
	if t.done {
		return 0, errTruncated
	}
	if int64(len(b)) <= t.left {
		n, err := t.ResponseWriter.Write(b)
		t.left -= int64(n)
		return n, err
	}
	n, _ := t.ResponseWriter.Write(b[:t.left])
	t.done = true
	rc := http.NewResponseController(t.ResponseWriter)
	rc.Flush()
	if conn, _, err := rc.Hijack(); err == nil {
		if tc, ok := conn.(*net.TCPConn); ok && t.reset {
			tc.SetLinger(0)
		}
		conn.Close()
	}
	return n, errTruncated
}

// Unwrap lets http.ResponseController reach the real writer.
func (t *truncatingWriter) Unwrap() http.ResponseWriter { return t.ResponseWriter }

// Operation names the S3 operation of a request, roughly as the API does.
func Operation(r *http.Request) string {
	q := r.URL.Query()
	path := strings.TrimPrefix(r.URL.Path, "/")
	bucketOnly := !strings.Contains(path, "/")
	switch r.Method {
	case http.MethodHead:
		if bucketOnly {
			return "HeadBucket"
		}
		return "HeadObject"
	case http.MethodGet:
		if bucketOnly {
			return "ListObjects"
		}
		return "GetObject"
	case http.MethodPut:
		switch {
		case q.Has("partNumber") && r.Header.Get("X-Amz-Copy-Source") != "":
			return "UploadPartCopy"
		case q.Has("partNumber"):
			return "UploadPart"
		case r.Header.Get("X-Amz-Copy-Source") != "":
			return "CopyObject"
		case bucketOnly:
			return "CreateBucket"
		}
		return "PutObject"
	case http.MethodPost:
		switch {
		case q.Has("uploads"):
			return "CreateMultipartUpload"
		case q.Has("uploadId"):
			return "CompleteMultipartUpload"
		case q.Has("delete"):
			return "DeleteObjects"
		}
	case http.MethodDelete:
		if q.Has("uploadId") {
			return "AbortMultipartUpload"
		}
		return "DeleteObject"
	}
	return r.Method
}
