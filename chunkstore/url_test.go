package chunkstore_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

func TestParseURL(t *testing.T) {
	tests := []struct {
		name, in string
		want     chunkstore.Location
		wantErr  string
	}{
		{"abs path", "/var/lib/store", chunkstore.Location{Scheme: "file", Path: "/var/lib/store"}, ""},
		{"rel path", "./store/", chunkstore.Location{Scheme: "file", Path: "store"}, ""},
		{"file", "file:///var/lib/store/", chunkstore.Location{Scheme: "file", Path: "/var/lib/store"}, ""},
		{"file localhost", "file://localhost/srv", chunkstore.Location{Scheme: "file", Path: "/srv"}, ""},
		{"http", "http://store:8080/", chunkstore.Location{Scheme: "http", Host: "store", Port: "8080", URL: "http://store:8080"}, ""},
		{"https path", "https://cdn.example.com/chunks/", chunkstore.Location{Scheme: "https", Host: "cdn.example.com", Path: "/chunks", URL: "https://cdn.example.com/chunks"}, ""},
		{"http ipv6", "http://[::1]:80", chunkstore.Location{Scheme: "http", Host: "::1", Port: "80", URL: "http://[::1]:80"}, ""},
		{"upper scheme", "HTTP://x", chunkstore.Location{Scheme: "http", Host: "x", URL: "http://x"}, ""},
		{"ssh", "ssh://user@host:2222/srv/store", chunkstore.Location{Scheme: "ssh", User: "user", Host: "host", Port: "2222", Path: "/srv/store"}, ""},
		{"ssh plain", "ssh://host/store", chunkstore.Location{Scheme: "ssh", Host: "host", Path: "/store"}, ""},
		{"empty", "", chunkstore.Location{}, "empty"},
		{"blank", "  ", chunkstore.Location{}, "empty"},
		{"typo scheme", "htp://store/", chunkstore.Location{}, `unknown scheme "htp"`},
		{"s3", "s3://bucket/x", chunkstore.Location{}, `unknown scheme "s3"`},
		{"nothing after scheme", "http://", chunkstore.Location{}, "nothing after"},
		{"http no host", "http:///path", chunkstore.Location{}, "missing host"},
		{"http bad port", "http://host:99999/", chunkstore.Location{}, "bad port"},
		{"http query", "http://host/?x=1", chunkstore.Location{}, "no query"},
		{"http creds", "http://u:p@host/", chunkstore.Location{}, "credentials"},
		{"ssh no host", "ssh:///srv", chunkstore.Location{}, "missing host"},
		{"ssh no path", "ssh://host", chunkstore.Location{}, "missing store path"},
		{"ssh root path", "ssh://host/", chunkstore.Location{}, "missing store path"},
		{"ssh home path", "ssh://host/~/store", chunkstore.Location{}, "must be absolute"},
		{"ssh password", "ssh://u:pw@host/srv", chunkstore.Location{}, "passwords"},
		{"scp style", "host:store", chunkstore.Location{}, "scp-style"},
		{"scp style user", "user@host:/srv/store", chunkstore.Location{}, "scp-style"},
		{"host and port", "127.0.0.1:8080", chunkstore.Location{}, "write http://127.0.0.1:8080"},
		{"host and port, slash", "store:8080/", chunkstore.Location{}, "looks like host:port"},
		{"file remote host", "file://otherhost/srv", chunkstore.Location{}, "not local"},
		{"file relative", "file://store", chunkstore.Location{}, "not local"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := chunkstore.ParseURL(tt.in)
			if tt.wantErr != "" {
				if err == nil || !errors.Is(err, chunkstore.ErrBadURL) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("ParseURL(%q) = %+v, %v; want ErrBadURL mentioning %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ParseURL(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParseURLs(t *testing.T) {
	locs, err := chunkstore.ParseURLs("http://a:1/, /local ,ssh://h/p")
	if err != nil || len(locs) != 3 || locs[0].Scheme != "http" || locs[1].Path != "/local" || locs[2].Scheme != "ssh" {
		t.Errorf("ParseURLs = %+v, %v", locs, err)
	}
	for _, in := range []string{"", "http://a/,", ",/x", "http://a/,,/b", "/a,htp://b"} {
		if _, err := chunkstore.ParseURLs(in); !errors.Is(err, chunkstore.ErrBadURL) {
			t.Errorf("ParseURLs(%q) = %v, want ErrBadURL", in, err)
		}
	}
}

func TestLocationStringRoundTrip(t *testing.T) {
	for _, in := range []string{"/srv/store", "http://h:8080", "https://h/x", "ssh://u@h:22/srv", "ssh://[::1]/srv"} {
		l, err := chunkstore.ParseURL(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := l.String(); got != in {
			t.Errorf("ParseURL(%q).String() = %q", in, got)
		}
	}
}

func TestOpen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := chunkstore.Open(ctx, dir, chunkstore.Options{})
	if _, ok := s.(*chunkstore.Local); err != nil || !ok {
		t.Errorf("Open(%q) = %T, %v; want *Local", dir, s, err)
	}
	s, err = chunkstore.Open(ctx, "http://127.0.0.1:1/,"+dir, chunkstore.Options{})
	if f, ok := s.(*chunkstore.Failover); err != nil || !ok || len(f.Stores()) != 2 {
		t.Errorf("Open(list) = %T, %v; want a Failover of 2", s, err)
	}
	if _, err := chunkstore.Open(ctx, "ssh://h/srv", chunkstore.Options{}); err == nil || !strings.Contains(err.Error(), "no dialer") {
		t.Errorf("Open(ssh) without a dialer = %v, want a no-dialer error", err)
	}
	var dialed chunkstore.Location
	opts := chunkstore.Options{Dialers: map[string]chunkstore.Dialer{
		"ssh": func(ctx context.Context, loc chunkstore.Location, opts chunkstore.Options) (chunkstore.Store, error) {
			dialed = loc
			return chunkstore.NewMemory(chunkstore.MemoryOptions{}), nil
		},
	}}
	if _, err := chunkstore.Open(ctx, "ssh://u@h:2/srv", opts); err != nil || dialed.Host != "h" || dialed.Path != "/srv" {
		t.Errorf("Open(ssh) with a dialer = %v, dialed %+v", err, dialed)
	}
	if _, err := chunkstore.Open(ctx, "htp://x", chunkstore.Options{}); !errors.Is(err, chunkstore.ErrBadURL) {
		t.Errorf("Open(bad) = %v, want ErrBadURL", err)
	}
}

// TestOpenListWithMemberDown: a store list opens although one member
// cannot be opened now (an ssh server that is down); that member is opened
// again when the failover turns to it. Only a list none of whose members
// opens is an error.
func TestOpenListWithMemberDown(t *testing.T) {
	ctx := context.Background()
	want := []byte("a chunk only the ssh store has")
	id := casync.SHA512_256.Sum(want)
	mem := chunkstore.NewMemory(chunkstore.MemoryOptions{})
	if err := mem.StoreChunk(ctx, id, want); err != nil {
		t.Fatal(err)
	}
	var up atomic.Bool
	var dials atomic.Int64
	opts := chunkstore.Options{Dialers: map[string]chunkstore.Dialer{
		"ssh": func(ctx context.Context, loc chunkstore.Location, opts chunkstore.Options) (chunkstore.Store, error) {
			dials.Add(1)
			if !up.Load() {
				return nil, errors.New("connection refused")
			}
			return mem, nil
		},
	}}
	s, err := chunkstore.Open(ctx, t.TempDir()+",ssh://h/srv", opts)
	if err != nil {
		t.Fatalf("Open(a list whose ssh member is down) = %v, want the list", err)
	}
	defer s.Close()
	if _, err := s.GetChunk(ctx, id); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("GetChunk while the ssh store is down = %v, want its error", err)
	}
	up.Store(true)
	if got, err := s.GetChunk(ctx, id); err != nil || !bytes.Equal(got, want) {
		t.Errorf("GetChunk once the ssh store is up = %q, %v; want the chunk", got, err)
	}
	n := dials.Load()
	if _, err := s.GetChunk(ctx, id); err != nil || dials.Load() != n {
		t.Errorf("GetChunk again = %v after %d more dials; want the open store reused", err, dials.Load()-n)
	}
	up.Store(false)
	if _, err := chunkstore.Open(ctx, "ssh://h/a,ssh://h/b", opts); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Open(a list of stores that are all down) = %v, want their error", err)
	}
}

func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"/a", "file:///a", "http://h:1/p", "https://[::1]/", "ssh://u@h:2/p", "htp://x", "h:p", "", ",", "http://a/,/b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		locs, err := chunkstore.ParseURLs(s)
		if err != nil {
			if !errors.Is(err, chunkstore.ErrBadURL) {
				t.Fatalf("ParseURLs(%q) = %v, not wrapping ErrBadURL", s, err)
			}
			return
		}
		for _, l := range locs {
			// What parses prints back to something that parses the same.
			again, err := chunkstore.ParseURL(l.String())
			if err != nil || again != l {
				t.Fatalf("ParseURL(%q) = %+v; its String %q parses to %+v, %v", s, l, l.String(), again, err)
			}
		}
	})
}
