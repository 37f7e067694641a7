package snapshot

import (
	"bytes"
	"context"
	"log/slog"
	"net/url"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/ckptfs/ckptfs/internal/s3test"
)

// Test server settings: the gateway's credentials and bucket, and the
// prefix the stores use in it.
const (
	testS3Access = s3test.AccessKey
	testS3Secret = s3test.SecretKey
	testBucket   = s3test.Bucket
	testPrefix   = "ckptfs/test"
)

// s3Server is a Versity S3 gateway serving a temporary directory, whose
// subdirectory testBucket is the bucket.
type s3Server struct{ *s3test.Server }

// startS3 starts a gateway on a free loopback port and stops it when the
// test ends.
func startS3(t testing.TB) *s3Server { return &s3Server{s3test.Start(t)} }

// start starts the gateway again after stop, on the same address.
func (srv *s3Server) start(t testing.TB) { srv.Restart(t) }

func (srv *s3Server) stop() { srv.Stop() }

func (srv *s3Server) endpoint() string { return srv.Endpoint() }

// config returns the settings that reach the gateway.
func (srv *s3Server) config(t testing.TB) s3Config {
	t.Helper()
	endpoint, err := url.Parse(srv.endpoint())
	if err != nil {
		t.Fatalf("parse endpoint: %v", err)
	}
	return s3Config{endpoint: endpoint, region: "us-east-1", accessKey: testS3Access, secretKey: testS3Secret}
}

// openS3Store opens a Store on the gateway's bucket for host and returns
// it with its log.
func openS3Store(t testing.TB, srv *s3Server, host string) (*Store, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b, err := openS3(srv.config(t), testBucket, testPrefix, host, log)
	if err != nil {
		t.Fatalf("open S3 store on %s: %v", srv.Addr, err)
	}
	return &Store{backend: b, log: log}, logs
}

// s3Of returns the S3 backend of a Store.
func s3Of(t testing.TB, s *Store) *s3Store {
	t.Helper()
	b, ok := s.backend.(*s3Store)
	if !ok {
		t.Fatalf("store %s has backend %T, not S3", s.Dir(), s.backend)
	}
	return b
}

// dataKeys returns the keys of every data object of the store's host.
func dataKeys(t testing.TB, s *Store) []string {
	t.Helper()
	b := s3Of(t, s)
	objects, err := b.listObjects(b.root)
	if err != nil {
		t.Fatalf("list objects: %v", err)
	}
	var keys []string
	for key := range objects {
		if strings.Contains(key, "/"+dataPrefix) {
			keys = append(keys, key)
		}
	}
	return keys
}

// flipObjectByte inverts the byte at off of an object by putting it again.
func flipObjectByte(t testing.TB, b *s3Store, key string, off int64) {
	t.Helper()
	data, err := b.getAll(key, 1<<30)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	if off >= int64(len(data)) {
		t.Fatalf("byte %d is past the end of %s (%d bytes)", off, key, len(data))
	}
	data[off] ^= 0xff

	_, err = b.client.PutObject(context.Background(), b.bucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{})
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}
