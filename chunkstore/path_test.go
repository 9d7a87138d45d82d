package chunkstore_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

func TestParseChunkPath(t *testing.T) {
	id := casync.SHA512_256.Sum([]byte("x"))
	s := id.String()
	tests := []struct {
		name, in string
		ok       bool
	}{
		{"good", s[:4] + "/" + s + ".cacnk", true},
		{"leading slash", "/" + s[:4] + "/" + s + ".cacnk", false},
		{"wrong prefix", "abcd/" + s + ".cacnk", false},
		{"upper", strings.ToUpper(s[:4]+"/"+s) + ".cacnk", false},
		{"ext", s[:4] + "/" + s + ".cacnx", false},
		{"short", s[:4] + "/" + s[1:] + ".cacnk", false},
		{"dots", "..../" + s + ".cacnk", false},
		{"backslash", s[:4] + "\\" + s + ".cacnk", false},
		{"empty", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := chunkstore.ParseChunkPath(tt.in)
			if tt.ok != (err == nil) || (tt.ok && got != id) {
				t.Errorf("ParseChunkPath(%q) = %s, %v; want ok=%v", tt.in, got, err, tt.ok)
			}
			if err != nil && !errors.Is(err, chunkstore.ErrBadPath) {
				t.Errorf("ParseChunkPath(%q) error %v does not wrap ErrBadPath", tt.in, err)
			}
		})
	}
}

func FuzzParseChunkPath(f *testing.F) {
	for _, d := range []string{"", "a", "x"} {
		f.Add(chunkstore.ChunkPath(casync.SHA512_256.Sum([]byte(d))))
	}
	f.Add("../../etc/passwd")
	f.Add("%2e%2e/x")
	f.Fuzz(func(t *testing.T, p string) {
		id, err := chunkstore.ParseChunkPath(p)
		if err != nil {
			if !errors.Is(err, chunkstore.ErrBadPath) {
				t.Fatalf("ParseChunkPath(%q) = %v, not wrapping ErrBadPath", p, err)
			}
			return
		}
		// Only the canonical form parses.
		if got := chunkstore.ChunkPath(id); got != p {
			t.Fatalf("ParseChunkPath(%q) = %s, whose path is %q", p, id, got)
		}
	})
}
