package s3backend

import (
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"
)

// Config says which bucket and prefix a Store serves and how to reach it.
// Credentials never appear here: they come from the standard AWS chain
// (environment, shared profile, web identity, ECS task role, IMDS).
type Config struct {
	Bucket string
	Prefix string // "" or "a/b"; normalised to end in "/" when not empty

	Endpoint       string // "" for AWS; "http://127.0.0.1:7070" for a local server
	Region         string // "" to take it from the environment/profile, else us-east-1
	ForcePathStyle bool
	Profile        string // shared-config profile; "" for the default chain
	NoSignRequest  bool   // anonymous requests, for public buckets
	RequesterPays  bool
	CABundle       string // extra PEM bundle; AWS_CA_BUNDLE is honoured as well

	SSE          string // "", "AES256" or "aws:kms"
	SSEKMSKeyID  string // with SSE "aws:kms"
	StorageClass string // "" for the bucket default

	MaxAttempts    int           // per request, including the first; default 5 (the uploader retries on top, forever)
	MaxBackoff     time.Duration // cap on the delay between attempts; default 4s
	MaxConnections int           // idle connections kept per host; default 64
	// IdleTimeout fails a request whose connection moves no byte either
	// way for this long (a black hole, a dead peer); default 2m. It is
	// generous: S3 keeps long server-side copies alive with whitespace.
	IdleTimeout time.Duration
	// UnsignedPayload skips hashing request bodies for the signature
	// (the payload is still protected by TLS on https endpoints).
	UnsignedPayload bool

	// DialFailed is told when a connection to S3 cannot be made at all
	// (refused, no route to the host or network): no answer is coming,
	// so Reach.DialFailed need not wait out its timeout. May be nil.
	DialFailed func(error)

	Observer Observer     // may be nil
	Logger   *slog.Logger // may be nil (slog.Default())
}

// CheckEndpoint says what is wrong with an endpoint URL, or nil. The SDK
// takes "127.0.0.1:9000" and fails later with an error about endpoint
// rules; users get the fix instead.
func CheckEndpoint(endpoint string) error {
	if endpoint == "" {
		return nil
	}
	shown := endpoint
	if strings.Contains(endpoint, "@") { // user:secret@host must not be echoed
		shown = "(not shown: it holds user information)"
	}
	u, err := url.Parse(endpoint)
	switch {
	case err != nil || u.Scheme == "" || u.Opaque != "":
		// "host:9000" parses as the scheme "host" and the opaque "9000".
		return fmt.Errorf("endpoint %q has no scheme: write http://%s or https://%s", shown, shown, shown)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("endpoint %q: the scheme must be http or https, not %q", shown, u.Scheme)
	case u.Host == "":
		return fmt.Errorf("endpoint %q has no host", shown)
	case u.User != nil:
		return fmt.Errorf("endpoint %q: credentials do not go in the URL; use the AWS environment or a profile", u.Redacted())
	}
	return nil
}
