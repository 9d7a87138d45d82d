package chunkstore

import (
	"fmt"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
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
