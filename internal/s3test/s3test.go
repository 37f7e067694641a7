// Package s3test runs a real S3 server for tests: a Versity S3 gateway
// (versitygw) serving a temporary directory on a free loopback port,
// killed by pid when the test ends.
package s3test

import (
	"bytes"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Credentials and bucket of every test server. They reach only a gateway
// on loopback that lives as long as one test.
const (
	AccessKey = "ckptfs-fleet-access"
	SecretKey = "ckptfs-fleet-secret-5b0c7d1e93"
	Bucket    = "fleet"
)

// waitLimit bounds WaitForObject, so that a save that never starts fails
// the test instead of hanging it.
const waitLimit = 60 * time.Second

// installCommand installs the gateway the tests use.
const installCommand = "go install github.com/versity/versitygw/cmd/versitygw@v1.8.0"

// Server is a running versitygw whose directory Dir holds the bucket
// Bucket as the subdirectory BucketDir.
type Server struct {
	Addr string // 127.0.0.1:PORT
	Dir  string

	bin string

	// mu protects cmd, exited and output while the gateway is stopped and
	// started again.
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	output *syncBuffer
}

// Start starts a gateway with an empty bucket on a free loopback port and
// registers a cleanup that kills it by pid.
func Start(t testing.TB) *Server {
	t.Helper()
	srv := &Server{bin: gatewayPath(t), Dir: filepath.Join(t.TempDir(), "gateway")}
	if err := os.MkdirAll(srv.BucketDir(), 0o700); err != nil {
		t.Fatalf("create bucket directory: %v", err)
	}

	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free loopback port: %v", err)
	}
	srv.Addr = listener.Addr().String()
	if err := listener.Close(); err != nil {
		t.Fatalf("close port probe: %v", err)
	}

	srv.Restart(t)
	t.Cleanup(srv.Stop)
	return srv
}

// gatewayPath finds versitygw on PATH or in GOPATH/bin, and fails the test
// with the install command when it is missing.
func gatewayPath(t testing.TB) string {
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
		t.Fatalf("versitygw is not on PATH nor at %s (%v); install it with: %s", path, err, installCommand)
	}
	return path
}

// Restart starts the gateway again on the same address and directory after
// Stop, and waits until it accepts connections. Start calls it once.
func (srv *Server) Restart(t testing.TB) {
	t.Helper()
	cmd := exec.Command(srv.bin, "--port", srv.Addr, "--access", AccessKey, "--secret", SecretKey, "posix", srv.Dir)
	output := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = output, output
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", srv.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()

	srv.mu.Lock()
	srv.cmd, srv.exited, srv.output = cmd, exited, output
	srv.mu.Unlock()

	for {
		conn, err := net.Dial("tcp", srv.Addr)
		if err == nil {
			_ = conn.Close()
			return
		}
		select {
		case <-exited:
			t.Fatalf("versitygw on %s exited at start: %s", srv.Addr, output.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stop kills the gateway by its pid and waits until it is reaped. It does
// nothing when the gateway is not running.
func (srv *Server) Stop() {
	srv.mu.Lock()
	cmd, exited := srv.cmd, srv.exited
	srv.cmd = nil
	srv.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-exited
}

// Output returns what the running or last gateway printed.
func (srv *Server) Output() string {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return srv.output.String()
}

// Endpoint returns the gateway's URL, the value of CKPTFS_S3_ENDPOINT.
func (srv *Server) Endpoint() string { return "http://" + srv.Addr }

// BucketDir returns the directory that holds the bucket's objects, one
// file per object at the path of its key.
func (srv *Server) BucketDir() string { return filepath.Join(srv.Dir, Bucket) }

// StoreURL returns the store URL of prefix in the bucket, for --store and
// snapshot.OpenURL.
func (srv *Server) StoreURL(prefix string) string { return "s3://" + Bucket + "/" + prefix }

// Env returns the environment variables that point a store at the gateway.
func (srv *Server) Env() []string {
	return []string{
		"CKPTFS_S3_ENDPOINT=" + srv.Endpoint(),
		"AWS_ACCESS_KEY_ID=" + AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + SecretKey,
	}
}

// Setenv sets the variables of Env in this process for the rest of t, so
// that snapshot.OpenURL reaches the gateway.
func (srv *Server) Setenv(t *testing.T) {
	t.Helper()
	for _, kv := range srv.Env() {
		key, value, _ := strings.Cut(kv, "=")
		t.Setenv(key, value)
	}
}

// Keys returns the keys of every object in the bucket, read from the
// gateway's directory, leaving out the gateway's own work files.
func (srv *Server) Keys(t testing.TB) []string {
	t.Helper()
	var keys []string
	err := filepath.WalkDir(srv.BucketDir(), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.Contains(path, "/.sgwtmp") {
			return err
		}
		rel, err := filepath.Rel(srv.BucketDir(), path)
		keys = append(keys, rel)
		return err
	})
	if err != nil {
		t.Fatalf("walk bucket directory %s: %v", srv.BucketDir(), err)
	}
	return keys
}

// WaitForObject polls the bucket every millisecond until it holds an
// object whose key starts with prefix and ends in suffix, and fails the
// test when none appears within a minute.
func (srv *Server) WaitForObject(t testing.TB, prefix, suffix string) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for time.Now().Before(deadline) {
		for _, key := range srv.Keys(t) {
			if strings.HasPrefix(key, prefix) && strings.HasSuffix(key, suffix) {
				return
			}
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("no object %s*%s appeared in bucket %s within %v", prefix, suffix, Bucket, waitLimit)
}

// syncBuffer collects the gateway's output from its copying goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
