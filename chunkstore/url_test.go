package chunkstore_test

import (
	"errors"
	"strings"
	"testing"

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
