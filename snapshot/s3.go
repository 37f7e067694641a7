package snapshot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"golang.org/x/sys/unix"
)

// Key parts of the S3 layout (see the package documentation).
const (
	s3Scheme   = "s3://"
	dataPrefix = ".data/" // followed by the upload id, under a process prefix

	// s3MaxRetries bounds the attempts of one request. minio-go waits
	// between 200 ms and 1 s between attempts, so a server that is down
	// fails a request after a few seconds instead of about ten.
	s3MaxRetries = 5
)

// s3Config is where and as whom to reach the S3 server. It holds a secret:
// never log it or put it in an error.
type s3Config struct {
	endpoint *url.URL
	region   string // empty: minio-go requests the bucket's region from the server

	accessKey, secretKey, sessionToken string
}

// s3Store keeps the snapshots of one host under a prefix of an S3 bucket.
type s3Store struct {
	client   *minio.Client
	endpoint string // the server's URL, for error messages
	bucket   string
	root     string // key prefix of this host's snapshots, ending in "/"
	warnings

	// manifestMu protects manifests.
	manifestMu sync.Mutex
	// manifests caches parsed manifests by key, so that listing does not
	// fetch every manifest again. A manifest object is never changed, only
	// deleted, and the entry also records its ETag.
	manifests map[string]cachedManifest

	// unconditional is set once the server rejected a conditional put.
	unconditional atomic.Bool

	// afterUpload, when set, runs after the data objects of a save are
	// uploaded and before its manifest is. Tests stop the server there.
	afterUpload func()
}

type cachedManifest struct {
	etag string
	size int64
	m    *manifest
}

// Compile-time check that a bucket is a backend.
var _ backend = (*s3Store)(nil)

// OpenURL opens the store at url: a local directory path, which Open opens,
// or s3://BUCKET/PREFIX, a prefix of an existing S3 bucket. In a bucket the
// snapshots of this host live under PREFIX/HOST/, so that hosts sharing a
// bucket never see each other's snapshots. HOST is the host name, or the
// machine id when the host name is localhost or not a valid key part.
//
// The server is AWS_ENDPOINT_URL, or CKPTFS_S3_ENDPOINT which takes
// precedence (an http:// or https:// URL), by default Amazon S3. The
// credentials are AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and optionally
// AWS_SESSION_TOKEN. AWS_REGION (or AWS_DEFAULT_REGION) names the region,
// which otherwise is requested from the server. A malformed URL or missing
// credentials give an error wrapping unix.EINVAL, a missing bucket one
// wrapping unix.ENOENT. A nil log discards messages.
func OpenURL(rawURL string, log *slog.Logger) (*Store, error) {
	rest, ok := strings.CutPrefix(rawURL, s3Scheme)
	if !ok {
		if scheme, _, found := strings.Cut(rawURL, "://"); found {
			return nil, fmt.Errorf("open store %s: unsupported scheme %q, expected a path or s3://BUCKET/PREFIX: %w",
				rawURL, scheme, unix.EINVAL)
		}
		return Open(rawURL, log)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	bucket, prefix, _ := strings.Cut(rest, "/")
	cfg, err := s3ConfigFromEnv()
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", rawURL, err)
	}
	host, err := hostID()
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", rawURL, err)
	}

	b, err := openS3(cfg, bucket, prefix, host, log)
	if err != nil {
		return nil, err
	}
	return &Store{backend: b, log: log, url: rawURL}, nil
}

// s3ConfigFromEnv reads the server and credentials from the environment.
func s3ConfigFromEnv() (s3Config, error) {
	raw := os.Getenv("CKPTFS_S3_ENDPOINT")
	if raw == "" {
		raw = os.Getenv("AWS_ENDPOINT_URL")
	}
	if raw == "" {
		raw = "https://s3.amazonaws.com"
	}
	endpoint, err := url.Parse(raw)
	if err != nil || (endpoint.Scheme != "http" && endpoint.Scheme != "https") || endpoint.Host == "" ||
		strings.Trim(endpoint.Path, "/") != "" {
		return s3Config{}, fmt.Errorf("S3 endpoint %q is not a URL of the form http(s)://HOST[:PORT]: %w", raw, unix.EINVAL)
	}

	cfg := s3Config{
		endpoint:     endpoint,
		region:       os.Getenv("AWS_REGION"),
		accessKey:    os.Getenv("AWS_ACCESS_KEY_ID"),
		secretKey:    os.Getenv("AWS_SECRET_ACCESS_KEY"),
		sessionToken: os.Getenv("AWS_SESSION_TOKEN"),
	}
	if cfg.region == "" {
		cfg.region = os.Getenv("AWS_DEFAULT_REGION")
	}
	if cfg.accessKey == "" || cfg.secretKey == "" {
		return s3Config{}, fmt.Errorf("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: %w", unix.EINVAL)
	}
	return cfg, nil
}

// hostID returns the name of this host's part of a bucket: the host name,
// or the machine id when the host name is localhost or not a valid key part.
func hostID() (string, error) {
	name, err := os.Hostname()
	if err == nil && name != "localhost" && ValidName(name) == nil {
		return name, nil
	}

	data, err := os.ReadFile("/etc/machine-id")
	if err != nil {
		return "", fmt.Errorf("no usable host name and no machine id: %w", err)
	}
	id := strings.TrimSpace(string(data))
	if ValidName(id) != nil {
		return "", fmt.Errorf("no usable host name, and machine id %.40q is not a valid key part: %w", id, unix.EINVAL)
	}
	return id, nil
}

// openS3 connects to the bucket and checks that it exists. The snapshots
// live under prefix/host/.
func openS3(cfg s3Config, bucket, prefix, host string, log *slog.Logger) (*s3Store, error) {
	where := s3Scheme + bucket + "/" + prefix
	if bucket == "" {
		return nil, fmt.Errorf("open store %s: no bucket name: %w", where, unix.EINVAL)
	}
	if ValidName(host) != nil {
		return nil, fmt.Errorf("open store %s: host id %.40q is not a valid key part: %w", where, host, unix.EINVAL)
	}

	client, err := minio.New(cfg.endpoint.Host, &minio.Options{
		Creds:      credentials.NewStaticV4(cfg.accessKey, cfg.secretKey, cfg.sessionToken),
		Secure:     cfg.endpoint.Scheme == "https",
		Region:     cfg.region,
		MaxRetries: s3MaxRetries,
	})
	if err != nil {
		return nil, fmt.Errorf("open store %s: S3 client for %s: %w", where, cfg.endpoint.Redacted(), err)
	}

	s := &s3Store{
		client:    client,
		endpoint:  cfg.endpoint.Redacted(),
		bucket:    bucket,
		root:      path.Join(strings.Trim(prefix, "/"), host) + "/",
		warnings:  newWarnings(log),
		manifests: map[string]cachedManifest{},
	}
	exists, err := client.BucketExists(context.Background(), bucket)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", where, s.fail("check bucket", "", err))
	}
	if !exists {
		return nil, fmt.Errorf("open store %s: bucket %s not found at %s: %w", where, bucket, s.endpoint, unix.ENOENT)
	}
	return s, nil
}

func (s *s3Store) location() string {
	return s.url(strings.TrimSuffix(s.root, "/"))
}

// url returns the s3:// URL of a key, for messages.
func (s *s3Store) url(key string) string {
	return s3Scheme + s.bucket + "/" + key
}

// processPrefix returns the key prefix of p's snapshots. It always carries
// the boot tag, so processes of different boots never share one.
func (s *s3Store) processPrefix(p ProcessID) string {
	return s.root + processDirNames(p)[1] + "/"
}

func manifestKey(proc, name string) string {
	return proc + name + "/" + manifestFile
}

func dataKey(proc, id, file string) string {
	return proc + dataPrefix + id + "/" + file
}

// fail wraps an error of a request about key (the bucket when key is "")
// with the object's URL and the server's, adding the errno that the S3 error
// code stands for when there is one.
func (s *s3Store) fail(op, key string, err error) error {
	where := s.url(key)
	if errno := s3Errno(err); errno != 0 {
		return fmt.Errorf("%s %s at %s: %w (%w)", op, where, s.endpoint, err, errno)
	}
	return fmt.Errorf("%s %s at %s: %w", op, where, s.endpoint, err)
}

// s3Response returns the S3 error response err wraps, or a zero one.
func s3Response(err error) minio.ErrorResponse {
	var resp minio.ErrorResponse
	errors.As(err, &resp)
	return resp
}

// s3Errno returns the errno for an S3 error response, or 0.
func s3Errno(err error) unix.Errno {
	resp := s3Response(err)
	switch {
	case resp.Code == minio.NoSuchKey || resp.Code == minio.NoSuchBucket:
		return unix.ENOENT
	case resp.StatusCode == 412 || resp.Code == "ConditionalRequestConflict":
		return unix.EEXIST
	case resp.Code == minio.AccessDenied:
		return unix.EACCES
	case resp.Code == minio.NotImplemented:
		return unix.EOPNOTSUPP
	}
	return 0
}

// gotReply reports whether err carries a response of the server, as opposed
// to a failure to reach it or to read its reply.
func gotReply(err error) bool {
	return s3Response(err).StatusCode != 0
}
