// Package registrytest starts real registries for tests: Debian's
// docker-registry (distribution 2.8) on a free port of 127.0.0.1, each
// with its own configuration, storage and log, optionally with TLS,
// htpasswd basic auth or token auth served by a small token server of
// its own.
package registrytest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/bootfs/bootfs/internal/testenv"
)

// Binary is Debian's distribution 2.8 registry.
const Binary = "docker-registry"

// Config says how to start a registry.
type Config struct {
	// TLS serves HTTPS with a self-signed certificate for 127.0.0.1.
	TLS bool
	// Users turns on htpasswd basic auth with these user: password pairs.
	Users map[string]string
	// Token turns on token auth with a token server of the test's: it
	// gives anonymous callers pull access and Users pull and push.
	Token bool
}

// Registry is a running registry.
type Registry struct {
	// Host is 127.0.0.1:PORT.
	Host string
	// Dir holds config.yml, the storage (storage/) and the log.
	Dir, ConfigFile, Storage string
	// CAFile is the certificate to trust with TLS.
	CAFile string
	cmd    *exec.Cmd
	log    *testenv.SyncBuffer
}

// Start starts a registry and stops it when the test ends.
func Start(t testing.TB, c Config) *Registry {
	t.Helper()
	bin := testenv.LookPath(t, Binary)
	dir := t.TempDir()
	r := &Registry{Dir: dir, ConfigFile: filepath.Join(dir, "config.yml"), Storage: filepath.Join(dir, "storage"), log: &testenv.SyncBuffer{}}
	port := FreePort(t)
	r.Host = fmt.Sprintf("127.0.0.1:%d", port)
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n")
	fmt.Fprintf(&cfg, "storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n", r.Storage)
	fmt.Fprintf(&cfg, "http:\n  addr: %s\n", r.Host)
	if c.TLS {
		cert, key, _ := testenv.WriteSelfSignedCert(t, dir)
		r.CAFile = cert
		fmt.Fprintf(&cfg, "  tls:\n    certificate: %s\n    key: %s\n", cert, key)
	}
	switch {
	case c.Token:
		realm, bundle := startTokenServer(t, dir, "bootfs-test", c.Users)
		fmt.Fprintf(&cfg, "auth:\n  token:\n    realm: %s\n    service: bootfs-test\n    issuer: bootfs-test-issuer\n    rootcertbundle: %s\n", realm, bundle)
	case len(c.Users) > 0:
		var hp bytes.Buffer
		for u, p := range c.Users {
			h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&hp, "%s:%s\n", u, h)
		}
		htpasswd := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(htpasswd, hp.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&cfg, "auth:\n  htpasswd:\n    realm: bootfs-test\n    path: %s\n", htpasswd)
	}
	if err := os.WriteFile(r.ConfigFile, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	r.cmd = exec.Command(bin, "serve", r.ConfigFile)
	r.cmd.Stdout, r.cmd.Stderr = r.log, r.log
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	t.Cleanup(func() {
		r.cmd.Process.Kill()
		r.cmd.Wait()
		if t.Failed() {
			t.Logf("registry log:\n%s", r.Log())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", r.Host, time.Second)
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("registry on %s did not start: %v\n%s", r.Host, err, r.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return r
}

// Log returns what the registry logged so far.
func (r *Registry) Log() string { return r.log.String() }

// ResetLog forgets what the registry logged so far.
func (r *Registry) ResetLog() { r.log.Reset() }

// BlobGets returns the blob digests of the GET requests in the access
// log, one per request.
func (r *Registry) BlobGets() []string {
	var out []string
	for _, l := range strings.Split(r.Log(), "\n") {
		i := strings.Index(l, `"GET /v2/`)
		if i < 0 {
			continue
		}
		f := strings.Fields(l[i+1:])
		if len(f) < 2 {
			continue
		}
		if _, d, ok := strings.Cut(f[1], "/blobs/"); ok {
			out = append(out, d)
		}
	}
	return out
}

// GarbageCollect runs docker-registry garbage-collect on the stopped
// storage (the registry stays up: distribution's GC is safe while no
// push runs).
func (r *Registry) GarbageCollect(t testing.TB) string {
	t.Helper()
	out, err := exec.Command(Binary, "garbage-collect", r.ConfigFile).CombinedOutput()
	if err != nil {
		t.Fatalf("garbage-collect: %v\n%s", err, out)
	}
	return string(out)
}

// BlobPath is the storage file of the blob with digest "sha256:<hex>".
func (r *Registry) BlobPath(digest string) string {
	hex := strings.TrimPrefix(digest, "sha256:")
	return filepath.Join(r.Storage, "docker/registry/v2/blobs/sha256", hex[:2], hex, "data")
}

// WriteAuthFile writes a docker config.json with user's credentials for
// r and returns its name.
func (r *Registry) WriteAuthFile(t testing.TB, dir, user, password string) string {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"auths": map[string]any{r.Host: map[string]string{
		"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + password)),
	}}})
	name := filepath.Join(dir, "config.json")
	if err := os.WriteFile(name, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return name
}

// FreePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startTokenServer serves distribution's token protocol on a free port:
// a JWT signed with ES256, the certificate in its x5c header, for the
// scopes asked, with push only for users with the right password. It
// returns the realm URL and the file of the certificate the registry
// trusts.
func startTokenServer(t testing.TB, dir, service string, users map[string]string) (realm, bundle string) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "bootfs test token issuer"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	bundle = filepath.Join(dir, "token-ca.pem")
	if err := os.WriteFile(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		actions := []string{"pull"}
		if u, p, ok := req.BasicAuth(); ok {
			if want, known := users[u]; !known || want != p {
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`, http.StatusUnauthorized)
				return
			}
			actions = []string{"pull", "push"}
		}
		var access []map[string]any
		for _, scope := range req.URL.Query()["scope"] {
			f := strings.Split(scope, ":")
			if len(f) != 3 {
				continue
			}
			var granted []string
			for _, a := range strings.Split(f[2], ",") {
				for _, ok := range actions {
					if a == ok {
						granted = append(granted, a)
					}
				}
			}
			access = append(access, map[string]any{"type": f[0], "name": f[1], "actions": granted})
		}
		now := time.Now()
		header, _ := json.Marshal(map[string]any{"typ": "JWT", "alg": "ES256", "x5c": []string{base64.StdEncoding.EncodeToString(der)}})
		claims, _ := json.Marshal(map[string]any{
			"iss": "bootfs-test-issuer", "sub": "test", "aud": service,
			"exp": now.Add(5 * time.Minute).Unix(), "nbf": now.Add(-time.Minute).Unix(), "iat": now.Unix(),
			"jti": fmt.Sprint(now.UnixNano()), "access": access,
		})
		signing := b64(header) + "." + b64(claims)
		sum := sha256.Sum256([]byte(signing))
		r, s, err := ecdsa.Sign(rand.Reader, priv, sum[:])
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		sig := make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
		tok := signing + "." + b64(sig)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"token": tok, "access_token": tok, "expires_in": 300, "issued_at": now.Format(time.RFC3339)})
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	// A host name, not an IP literal: go-containerregistry refuses token
	// realms at private and loopback IP literals (an SSRF guard).
	return fmt.Sprintf("http://localhost:%d/token", l.Addr().(*net.TCPAddr).Port), bundle
}
