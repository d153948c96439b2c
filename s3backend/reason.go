package s3backend

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"syscall"
)

// NetworkReason says in a few words why a request got no answer:
// "connection refused", "no such host bkt.example.com", "no answer in
// time". The SDK's own message repeats the operation, the retry count and
// an "https response error" whatever the scheme; a user needs the cause.
// It returns "" when err holds no network cause it knows.
func NetworkReason(err error) string {
	var dns *net.DNSError
	var rec tls.RecordHeaderError
	var unknownCA x509.UnknownAuthorityError
	var badHost x509.HostnameError
	var invalid x509.CertificateInvalidError
	var op *net.OpError
	switch {
	case errors.As(err, &dns):
		if dns.IsNotFound {
			return "no such host " + dns.Name
		}
		return "cannot resolve " + dns.Name + ": " + dns.Err
	case errors.Is(err, http.ErrSchemeMismatch), errors.As(err, &rec):
		return "the endpoint does not speak TLS (is it http:// rather than https://?)"
	case errors.As(err, &unknownCA):
		return "its TLS certificate is signed by an unknown authority (give the CA with --ca-bundle or AWS_CA_BUNDLE)"
	case errors.As(err, &badHost):
		return "its TLS certificate is not valid for this host: " + badHost.Error()
	case errors.As(err, &invalid):
		return "its TLS certificate is not valid: " + invalid.Error()
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "no route to host"
	case errors.Is(err, syscall.ENETUNREACH):
		return "network unreachable"
	case errors.As(err, &op) && op.Timeout():
		return "connection timed out"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "the connection closed without an answer"
	case errors.Is(err, context.DeadlineExceeded):
		return "no answer in time"
	case errors.As(err, &op):
		return op.Err.Error()
	}
	return ""
}

// RequestHost returns scheme://host of the URL a failed request was sent
// to, or "": for AWS endpoints, which the SDK builds from the region and
// bucket, that is the address the user needs to see.
func RequestHost(err error) string {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return ""
	}
	u, perr := url.Parse(ue.URL)
	if perr != nil || u.Host == "" {
		return ""
	}
	return u.Scheme + "://" + u.Host
}
