package s3backend

import (
	"log/slog"
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
	// UnsignedPayload skips hashing request bodies for the signature
	// (the payload is still protected by TLS on https endpoints).
	UnsignedPayload bool

	Observer Observer     // may be nil
	Logger   *slog.Logger // may be nil (slog.Default())
}
