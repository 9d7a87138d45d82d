package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/bootfs/bootfs/casync"
)

// Environment variables and flags that users set; messages name them.
const (
	// EnvAuth names a docker config.json-format file with the registry
	// credentials boot uses.
	EnvAuth = "BOOTFS_REGISTRY_AUTH"
	// EnvPlainHTTP=1 lets boot talk plain HTTP to a registry that is not
	// on a loopback address.
	EnvPlainHTTP = "BOOTFS_REGISTRY_PLAIN_HTTP"
)

var (
	// ErrAuth is wrapped by errors of a registry that refused the
	// credentials, or wanted some and had none.
	ErrAuth = errors.New("registry: not authorized")
	// ErrPlainHTTP is wrapped by errors of a request that would have gone
	// over plain HTTP to a host that is not a loopback address.
	ErrPlainHTTP = errors.New("registry: plain HTTP refused")
	// ErrNotBootfs is wrapped by errors about a repository, tag or digest
	// that holds no bootfs chunk map.
	ErrNotBootfs = errors.New("registry: no bootfs chunks")
)

// Options configure New. The zero value reads a repository anonymously
// over HTTPS (plain HTTP to loopback addresses), with the system's CAs.
type Options struct {
	// AuthFile is a docker config.json-format file whose "auths" entry
	// for the registry host gives a username and password, an identity
	// token or a registry token (BOOTFS_REGISTRY_AUTH, mkimage
	// --registry-auth). Empty means anonymous, which still takes a
	// bearer token if the registry's challenge asks for one.
	AuthFile string
	// CAFile is a PEM file of CA certificates trusted besides the
	// system's (BOOTFS_CA_FILE, --ca-file).
	CAFile string
	// PlainHTTP allows plain HTTP to a registry that is not on a
	// loopback address, which always may use it
	// (BOOTFS_REGISTRY_PLAIN_HTTP=1, mkimage --registry-plain-http).
	PlainHTTP bool
	// Transport is the base round tripper; nil means a clone of
	// http.DefaultTransport with CAFile's CAs.
	Transport http.RoundTripper
	// Write opens the repository for pushing as well as pulling.
	Write bool
	// Digest is the hash chunk IDs are checked against.
	Digest casync.Digest
	// TrustWrites skips the check that a written chunk hashes to its ID:
	// mkimage computed the ID from the very bytes.
	TrustWrites bool
	// DeferKeepAlive leaves the keep-alive manifest to PushBootImage,
	// which gives it the boot image as subject; else Commit tags one.
	DeferKeepAlive bool
	// PackSize is the size packs are cut at (default 8 MiB).
	PackSize int
	// Jobs bounds parallel uploads and map reads (default 4).
	Jobs int
	// TempDir holds the spool of chunks written before Commit (default
	// os.TempDir()).
	TempDir string
	// OpenTimeout bounds New: the ping, the token and reading the chunk
	// maps (default 2 minutes), so that a registry that accepts
	// connections and never answers cannot hang boot.
	OpenTimeout time.Duration
	// Logger receives warnings; nil discards them.
	Logger *slog.Logger
}

const defaultPackSize = 8 << 20

func (o Options) withDefaults() Options {
	if o.PackSize <= 0 {
		o.PackSize = defaultPackSize
	}
	if o.Jobs <= 0 {
		o.Jobs = 4
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.OpenTimeout <= 0 {
		o.OpenTimeout = 2 * time.Minute
	}
	return o
}

// maxIdleConns is how many idle connections to the registry are kept:
// as many as boot's reader has requests in flight (8 batches of up to
// rangeJobs range requests), as the chunk server's client keeps.
const maxIdleConns = 32

// baseTransport is o.Transport, or a default one trusting o.CAFile,
// behind the plain-HTTP policy.
func (o Options) baseTransport() (http.RoundTripper, error) {
	rt := o.Transport
	if rt == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		// A registry that takes the request and never answers fails the
		// call instead of holding it (callers' contexts bound it too).
		t.ResponseHeaderTimeout = time.Minute
		// Keep a connection for every request a reader has in flight
		// (Go's default keeps 2 a host): one closed after a burst costs
		// the next request a handshake and a fresh congestion window.
		t.MaxIdleConnsPerHost = maxIdleConns
		t.MaxIdleConns = 2 * maxIdleConns
		if o.CAFile != "" {
			pem, err := os.ReadFile(o.CAFile)
			if err != nil {
				return nil, fmt.Errorf("registry CA file: %w", err)
			}
			pool, err := x509.SystemCertPool()
			if err != nil || pool == nil {
				pool = x509.NewCertPool()
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("registry CA file %s: no PEM certificates in it", o.CAFile)
			}
			t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		}
		rt = t
	}
	return &plainHTTPPolicy{inner: rt, allow: o.PlainHTTP}, nil
}

// plainHTTPPolicy refuses plain HTTP to hosts that are not loopback
// addresses unless allowed: go-containerregistry falls back to HTTP for
// private addresses on its own.
type plainHTTPPolicy struct {
	inner http.RoundTripper
	allow bool
}

func (p *plainHTTPPolicy) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && !p.allow && !isLoopback(req.URL.Hostname()) {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, fmt.Errorf("%w to %s: use https, or allow it with %s=1 (boot) or --registry-plain-http (mkimage)", ErrPlainHTTP, req.URL.Host, EnvPlainHTTP)
	}
	return p.inner.RoundTrip(req)
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// registryOf returns the name.Registry of host, allowed plain HTTP (ggcr
// tries HTTPS first either way) when it is loopback or o allows it.
func (o Options) registryOf(host string) (name.Registry, error) {
	var nopts []name.Option
	h, _, err := net.SplitHostPort(host)
	if err != nil {
		h = host
	}
	if o.PlainHTTP || isLoopback(strings.Trim(h, "[]")) {
		nopts = append(nopts, name.Insecure)
	}
	return name.NewRegistry(host, nopts...)
}

// connect pings the registry and returns an authenticated round tripper
// for repo with the scopes o needs.
func (o Options) connect(ctx context.Context, repo name.Repository) (http.RoundTripper, authn.Authenticator, error) {
	base, err := o.baseTransport()
	if err != nil {
		return nil, nil, err
	}
	auth, err := authFromFile(o.AuthFile, repo.RegistryStr())
	if err != nil {
		return nil, nil, err
	}
	scope := repo.Scope(transport.PullScope)
	if o.Write {
		scope = repo.Scope(transport.PushScope)
	}
	rt, err := transport.NewWithContext(ctx, repo.Registry, auth, base, []string{scope})
	if err != nil {
		return nil, nil, explain(err, o.AuthFile)
	}
	return rt, auth, nil
}

// explain adds what to do to the errors users can fix: credentials and
// CAs.
func explain(err error, authFile string) error {
	if err == nil {
		return nil
	}
	var cve *tls.CertificateVerificationError
	var uae x509.UnknownAuthorityError
	if errors.As(err, &cve) || errors.As(err, &uae) || strings.Contains(err.Error(), "x509: ") {
		return fmt.Errorf("%w (name the registry's CA with %s=FILE for boot, --ca-file for mkimage and boot mount)", err, "BOOTFS_CA_FILE")
	}
	var te *transport.Error
	unauthorized := errors.As(err, &te) && (te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden)
	if unauthorized || strings.Contains(err.Error(), "UNAUTHORIZED") || strings.Contains(err.Error(), "DENIED") {
		if authFile == "" {
			return fmt.Errorf("%w: %w (give credentials in a docker config.json file: %s=FILE for boot, --registry-auth FILE for mkimage)", ErrAuth, err, EnvAuth)
		}
		return fmt.Errorf("%w: %w (check the entry for this registry in %s)", ErrAuth, err, authFile)
	}
	return err
}
