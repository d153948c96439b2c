package harness

import (
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// Proxy sits between keelfs and the S3 server. It counts requests by S3
// operation, so tests can check what a filesystem operation costs, and it
// can inject faults.
type Proxy struct {
	Endpoint string // point keelfs here

	mu     sync.Mutex
	counts map[string]int
	fault  func(op string, r *http.Request) (status int, code string, cut bool)
	srv    *http.Server
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
		if fault != nil {
			if status, code, cut := fault(op, r); cut {
				if hj, ok := w.(http.Hijacker); ok {
					if conn, _, err := hj.Hijack(); err == nil {
						conn.Close()
						return
					}
				}
			} else if status != 0 {
				io.Copy(io.Discard, r.Body)
				w.Header().Set("Content-Type", "application/xml")
				w.WriteHeader(status)
				io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>`+code+`</Code><Message>injected by test</Message><RequestId>TESTFAULT</RequestId></Error>`)
				return
			}
		}
		rp.ServeHTTP(w, r)
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
	p.mu.Lock()
	p.fault = f
	p.mu.Unlock()
}

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
