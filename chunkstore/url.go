package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/bootfs/bootfs/casync"
)

// Location is a parsed store URL.
type Location struct {
	// Scheme is "file", "http", "https", "ssh" or "oci".
	Scheme string
	// Path is the store directory: a cleaned local path for "file", the
	// absolute remote path for "ssh". For http and https it is the URL's
	// path.
	Path string
	// User is the ssh user, if given.
	User string
	// Host is the host name or address, without port or brackets.
	Host string
	// Port is the port, if given.
	Port string
	// URL is the http or https base URL, without a trailing slash, or
	// the whole oci:// URL (package chunkstore/registry parses the rest).
	URL string
}

// String returns the location as a URL.
func (l Location) String() string {
	switch l.Scheme {
	case "http", "https", "oci":
		return l.URL
	case "ssh":
		u := url.URL{Scheme: "ssh", Host: hostPort(l.Host, l.Port), Path: l.Path}
		if l.User != "" {
			u.User = url.User(l.User)
		}
		return u.String()
	}
	if !filepath.IsAbs(l.Path) && strings.ContainsRune(l.Path, ':') {
		// Keep "a:b" from reading as scp-style ssh.
		return "./" + l.Path
	}
	return l.Path
}

func hostPort(host, port string) string {
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port != "" {
		return host + ":" + port
	}
	return host
}

const urlForms = "want a path, file:///path, http://host[:port]/[path], https://…, ssh://[user@]host[:port]/path or oci://host[:port]/repository"

// ParseURL parses one store URL:
//
//	/var/lib/store, ./store   a local directory
//	file:///var/lib/store     a local directory
//	http://host:8080/, https://host/store
//	ssh://[user@]host[:port]/abs/path
//	oci://host[:port]/repository      a registry repository (chunkstore/registry)
//
// An scp-like "host:path" is refused with a hint, rather than taken for a
// local directory with a colon in its name.
func ParseURL(s string) (Location, error) {
	bad := func(format string, args ...any) (Location, error) {
		return Location{}, fmt.Errorf("%w %q: %s", ErrBadURL, s, fmt.Sprintf(format, args...))
	}
	if strings.TrimSpace(s) == "" {
		return bad("empty (%s)", urlForms)
	}
	scheme, rest, hasScheme := strings.Cut(s, "://")
	if !hasScheme {
		if i := strings.IndexByte(s, ':'); i > 0 && !strings.ContainsRune(s[:i], '/') {
			if port := strings.TrimRight(s[i+1:], "/"); port != "" && strings.Trim(port, "0123456789") == "" {
				return bad("looks like host:port; write http://%s (%s)", s, urlForms)
			}
			return bad("looks like scp-style ssh; write ssh://%s/absolute/path (%s)", s[:i], urlForms)
		}
		return Location{Scheme: "file", Path: filepath.Clean(s)}, nil
	}
	if rest == "" {
		return bad("nothing after %s:// (%s)", scheme, urlForms)
	}
	switch strings.ToLower(scheme) {
	case "file", "http", "https", "ssh":
	case "oci":
		// A registry repository: package chunkstore/registry checks the
		// rest when it opens the store.
		u, err := url.Parse(s)
		if err != nil || u.Hostname() == "" || u.User != nil || strings.Trim(u.Path, "/") == "" || checkPort(u.Port()) != nil {
			return bad("want oci://host[:port]/repository")
		}
		return Location{Scheme: "oci", Host: u.Hostname(), Port: u.Port(), Path: u.Path, URL: "oci://" + rest}, nil
	default:
		return bad("unknown scheme %q (%s)", scheme, urlForms)
	}
	u, err := url.Parse(s)
	if err != nil {
		return bad("%v", err)
	}
	u.Scheme = strings.ToLower(u.Scheme)
	if u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return bad("a store URL has no query or fragment")
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return bad("file URLs name a local path: file:///absolute/path (host %q is not local)", u.Host)
		}
		if u.User != nil {
			return bad("file URLs have no user")
		}
		if u.Path == "" {
			return bad("missing path")
		}
		return Location{Scheme: "file", Path: filepath.Clean(u.Path)}, nil
	case "http", "https":
		if u.Hostname() == "" {
			return bad("missing host")
		}
		if err := checkPort(u.Port()); err != nil {
			return bad("%v", err)
		}
		if u.User != nil {
			return bad("credentials do not belong in a store URL; use a token file")
		}
		u.Path = strings.TrimRight(u.Path, "/")
		u.RawPath = strings.TrimRight(u.RawPath, "/")
		return Location{Scheme: u.Scheme, Host: u.Hostname(), Port: u.Port(), Path: u.Path, URL: u.String()}, nil
	case "ssh":
		if u.Hostname() == "" {
			return bad("missing host")
		}
		if err := checkPort(u.Port()); err != nil {
			return bad("%v", err)
		}
		if _, ok := u.User.Password(); ok {
			return bad("passwords are not allowed in ssh URLs; use keys")
		}
		p := u.Path
		if p == "" || p == "/" {
			return bad("missing store path; write ssh://host/absolute/path")
		}
		if strings.HasPrefix(p, "/~") {
			return bad("the store path must be absolute, not relative to the home directory")
		}
		return Location{Scheme: "ssh", User: u.User.Username(), Host: u.Hostname(), Port: u.Port(), Path: p}, nil
	}
	return bad("unknown scheme %q (%s)", u.Scheme, urlForms)
}

func checkPort(p string) error {
	if p == "" {
		return nil
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("bad port %q", p)
	}
	return nil
}

// ParseURLs parses a comma-separated list of store URLs, which means
// failover in order.
func ParseURLs(s string) ([]Location, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("%w: empty store list (%s)", ErrBadURL, urlForms)
	}
	parts := strings.Split(s, ",")
	locs := make([]Location, 0, len(parts))
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if p == "" {
			return nil, fmt.Errorf("%w: store list %q: element %d is empty", ErrBadURL, s, i+1)
		}
		l, err := ParseURL(p)
		if err != nil {
			return nil, err
		}
		locs = append(locs, l)
	}
	return locs, nil
}

// Dialer opens a store for a location of the scheme it is registered
// under in Options.Dialers.
type Dialer func(ctx context.Context, loc Location, opts Options) (Store, error)

// Options configure Open and OpenLocation. The zero value opens local,
// http and https stores.
type Options struct {
	// Digest is the hash that chunk IDs are checked against. It
	// overrides the Digest of HTTP and Local.
	Digest casync.Digest
	// HTTP configures http and https stores.
	HTTP HTTPOptions
	// Local configures local stores.
	Local LocalOptions
	// Dialers open stores of other schemes, keyed by scheme. The sshstore
	// package provides one for "ssh":
	//
	//	opts.Dialers = map[string]chunkstore.Dialer{"ssh": sshstore.Dial}
	//
	// A dialer here also replaces the built-in one of its scheme.
	Dialers map[string]Dialer
	// Logger is passed on to the stores; nil discards.
	Logger *slog.Logger
}

// Open opens the store or comma-separated failover list of stores that
// spec names.
func Open(ctx context.Context, spec string, opts Options) (Store, error) {
	locs, err := ParseURLs(spec)
	if err != nil {
		return nil, err
	}
	if len(locs) == 1 {
		return OpenLocation(ctx, locs[0], opts)
	}
	// A member that cannot be opened now (an ssh server that is down)
	// is opened again when the failover next turns to it: a backup store
	// that is down must not stop the others from serving. Only when none
	// opens is that an error.
	stores := make([]Store, 0, len(locs))
	var errs []error
	for _, l := range locs {
		s, err := OpenLocation(ctx, l, opts)
		if err != nil {
			errs = append(errs, err)
			s = &reopening{loc: l, opts: opts}
		}
		stores = append(stores, s)
	}
	if len(errs) == len(locs) {
		return nil, errors.Join(errs...)
	}
	if opts.Logger != nil {
		for _, err := range errs {
			opts.Logger.Warn("chunk store unavailable for now; the others serve, and it is tried again", "err", err)
		}
	}
	return NewFailover(stores...), nil
}

// reopening is a member of a store list that could not be opened: every
// call tries to open it again, until that works.
type reopening struct {
	loc  Location
	opts Options
	mu   sync.Mutex
	s    Store
}

func (r *reopening) store(ctx context.Context) (Store, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.s != nil {
		return r.s, nil
	}
	s, err := OpenLocation(ctx, r.loc, r.opts)
	if err != nil {
		return nil, err
	}
	r.s = s
	return s, nil
}

func (r *reopening) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	s, err := r.store(ctx)
	if err != nil {
		return nil, err
	}
	return s.GetChunk(ctx, id)
}

func (r *reopening) HasChunk(ctx context.Context, id casync.ChunkID) (bool, error) {
	s, err := r.store(ctx)
	if err != nil {
		return false, err
	}
	return s.HasChunk(ctx, id)
}

func (r *reopening) StoreChunk(ctx context.Context, id casync.ChunkID, data []byte) error {
	s, err := r.store(ctx)
	if err != nil {
		return err
	}
	ws, ok := s.(WriteStore)
	if !ok {
		return fmt.Errorf("store chunk %s: %w: %s", id, ErrReadOnly, r.loc)
	}
	return ws.StoreChunk(ctx, id, data)
}

func (r *reopening) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.s != nil {
		return r.s.Close()
	}
	return nil
}

func (r *reopening) String() string { return r.loc.String() }

// OpenLocation opens one store.
func OpenLocation(ctx context.Context, loc Location, opts Options) (Store, error) {
	if d, ok := opts.Dialers[loc.Scheme]; ok && d != nil {
		s, err := d(ctx, loc, opts)
		if err != nil {
			return nil, fmt.Errorf("open store %s: %w", loc, err)
		}
		return s, nil
	}
	switch loc.Scheme {
	case "file":
		lo := opts.Local
		lo.Digest = opts.Digest
		if lo.Logger == nil {
			lo.Logger = opts.Logger
		}
		return NewLocal(loc.Path, lo)
	case "http", "https":
		ho := opts.HTTP
		ho.Digest = opts.Digest
		if ho.Logger == nil {
			ho.Logger = opts.Logger
		}
		return NewHTTP(loc.URL, ho)
	}
	return nil, fmt.Errorf("open store %s: no dialer for %s:// stores (this program was built without it)", loc, loc.Scheme)
}
