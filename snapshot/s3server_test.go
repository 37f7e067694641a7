package snapshot

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
)

// Credentials of the test servers, which listen on loopback only.
const (
	testS3Access = "ckptfs-test-access"
	testS3Secret = "ckptfs-test-secret-0123456789"
	testBucket   = "snapshots"
	testPrefix   = "ckptfs/test"
)

// versitygwInstall is the command that installs the S3 server the tests use.
const versitygwInstall = "go install github.com/versity/versitygw/cmd/versitygw@v1.8.0"

// s3Server is a Versity S3 gateway serving a temporary directory, whose
// subdirectory testBucket is the bucket.
type s3Server struct {
	bin  string
	dir  string
	addr string // 127.0.0.1:PORT

	// mu protects cmd and exited while the server is restarted.
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	output *logBuffer
}

// versitygwPath finds the gateway on PATH or in GOPATH/bin and fails the
// test when it is missing.
func versitygwPath(t testing.TB) string {
	t.Helper()
	if path, err := exec.LookPath("versitygw"); err == nil {
		return path
	}
	gopath, err := exec.Command("go", "env", "GOPATH").Output()
	if err != nil {
		t.Fatalf("versitygw is not on PATH and `go env GOPATH` failed: %v", err)
	}
	path := filepath.Join(strings.TrimSpace(string(gopath)), "bin", "versitygw")
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("versitygw is not on PATH nor at %s (%v); install it with: %s", path, err, versitygwInstall)
	}
	return path
}

// startS3 starts a gateway on a free loopback port and stops it when the
// test ends.
func startS3(t testing.TB) *s3Server {
	t.Helper()
	srv := &s3Server{bin: versitygwPath(t), dir: filepath.Join(t.TempDir(), "gateway")}
	if err := os.MkdirAll(filepath.Join(srv.dir, testBucket), 0o700); err != nil {
		t.Fatalf("create bucket directory: %v", err)
	}

	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	srv.addr = listener.Addr().String()
	if err := listener.Close(); err != nil {
		t.Fatalf("close port probe: %v", err)
	}

	srv.start(t)
	t.Cleanup(srv.stop)
	return srv
}

// start runs the gateway and waits until it accepts connections.
func (srv *s3Server) start(t testing.TB) {
	t.Helper()
	cmd := exec.Command(srv.bin, "--port", srv.addr, "--access", testS3Access, "--secret", testS3Secret, "posix", srv.dir)
	output := &logBuffer{}
	cmd.Stdout, cmd.Stderr = output, output
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", srv.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()

	srv.mu.Lock()
	srv.cmd, srv.exited, srv.output = cmd, exited, output
	srv.mu.Unlock()

	for {
		conn, err := net.Dial("tcp", srv.addr)
		if err == nil {
			conn.Close()
			return
		}
		select {
		case <-exited:
			t.Fatalf("versitygw on %s exited at start: %s", srv.addr, output.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop kills the gateway by its pid and waits for it. Calls without a
// running gateway do nothing.
func (srv *s3Server) stop() {
	srv.mu.Lock()
	cmd, exited := srv.cmd, srv.exited
	srv.cmd = nil
	srv.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-exited
}

func (srv *s3Server) endpoint() string { return "http://" + srv.addr }

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
		t.Fatalf("open S3 store on %s: %v", srv.addr, err)
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
