package bootconfig

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/config.json")

func sampleConfig() *Config {
	return &Config{
		Version:       Version,
		BootfsVersion: "v0.1.0",
		Source:        "example/app:1",
		SourceImageID: "sha256:" + strings.Repeat("ab", 32),
		Store:         "http://127.0.0.1:8080,/srv/store",
		Chunking:      Chunking{Chunker: "buzhash", Digest: "sha512-256", Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10},
		Index:         Blob{Digest: "sha256:" + strings.Repeat("01", 32), Size: 4096},
		TOC:           Blob{Digest: "sha256:" + strings.Repeat("02", 32), Size: 1234},
		ArchiveSize:   1 << 30,
		Prefetch:      []string{strings.Repeat("c", 64), strings.Repeat("d", 64)},
		Image: Image{
			Entrypoint:   []string{"/docker-entrypoint.sh"},
			Cmd:          []string{"nginx", "-g", "daemon off;"},
			Env:          []string{"PATH=/usr/sbin:/usr/bin", "EMPTY="},
			WorkingDir:   "/srv",
			User:         "101:101",
			Volumes:      []string{"/var/log", "/data"},
			ExposedPorts: []string{"80/tcp", "443/tcp", "53/udp"},
			Labels:       map[string]string{"z": "last", "a": "first"},
			StopSignal:   "SIGQUIT",
			Healthcheck: &Healthcheck{
				Test:     []string{"CMD", "true"},
				Interval: 30 * time.Second,
				Timeout:  5 * time.Second,
				Retries:  3,
			},
		},
	}
}

// TestGolden pins the encoding, key order included: equal configs must
// give equal bytes, on every machine, for the image ID to be reproducible.
func TestGolden(t *testing.T) {
	got, err := sampleConfig().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "config.json")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("Marshal() =\n%s\nwant (testdata/config.json)\n%s", got, want)
	}
	// The same config built with the lists in another order marshals the same.
	c := sampleConfig()
	c.Image.Volumes = []string{"/data", "/var/log"}
	c.Image.ExposedPorts = []string{"53/udp", "443/tcp", "80/tcp"}
	got2, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got2, want) {
		t.Errorf("Marshal() with reordered lists differs from testdata/config.json:\n%s", got2)
	}
	if !reflect.DeepEqual(c.Image.Volumes, []string{"/data", "/var/log"}) {
		t.Errorf("Marshal modified its receiver: volumes = %q", c.Image.Volumes)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Config)
	}{
		{"full", func(*Config) {}},
		{"dir source, no image config", func(c *Config) {
			c.Source, c.SourceImageID, c.Store, c.Prefetch, c.Image = "dir:/rootfs", "", "", nil, Image{}
		}},
		{"rabin sha256", func(c *Config) {
			c.Chunking = Chunking{Chunker: "rabin", Digest: "sha256", Min: 1, Avg: 1, Max: 128 << 20}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := sampleConfig()
			tc.edit(c)
			b, err := c.Marshal()
			if err != nil {
				t.Fatalf("Marshal() = %v", err)
			}
			got, err := Load(b)
			if err != nil {
				t.Fatalf("Load(%s) = %v", b, err)
			}
			want := *c
			want.Image.Volumes = sortedCopy(c.Image.Volumes)
			want.Image.ExposedPorts = sortedCopy(c.Image.ExposedPorts)
			if !reflect.DeepEqual(*got, want) {
				t.Errorf("Load(Marshal(c)) = %+v, want %+v", *got, want)
			}
		})
	}
}

func TestLoadRejects(t *testing.T) {
	valid, err := sampleConfig().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	replace := func(old, new string) []byte {
		if !bytes.Contains(valid, []byte(old)) {
			t.Fatalf("sample config has no %q", old)
		}
		return bytes.Replace(valid, []byte(old), []byte(new), 1)
	}
	for _, tc := range []struct {
		name string
		data []byte
		want string // in the error message
	}{
		{"empty", nil, "EOF"},
		{"not json", []byte("version: 1"), "invalid character"},
		{"no version", replace(`"version": 1,`, ``), "no version"},
		{"version 0", replace(`"version": 1,`, `"version": 0,`), "no version"},
		{"version 2", replace(`"version": 1,`, `"version": 2,`), "version 2 is not supported"},
		{"version -1", replace(`"version": 1,`, `"version": -1,`), "version -1 is not supported"},
		{"version string", replace(`"version": 1,`, `"version": "1",`), "cannot unmarshal"},
		{"unknown field", replace(`"version": 1,`, `"version": 1, "extra": true,`), "unknown field"},
		{"trailing data", append(clone(valid), "{}"...), "data after"},
		{"bad chunker", replace(`"buzhash"`, `"fastcdc"`), "chunking.chunker"},
		{"bad digest", replace(`"sha512-256"`, `"md5"`), "chunking.digest"},
		{"min above avg", replace(`"min": 16384`, `"min": 70000`), "chunking sizes"},
		{"min zero", replace(`"min": 16384`, `"min": 0`), "chunking sizes"},
		{"max too large", replace(`"max": 262144`, `"max": 134217729`), "chunking sizes"},
		{"index digest uppercase", replace(`"sha256:0101`, `"sha256:AB01`), "index.digest"},
		{"index digest algo", replace(`"sha256:0101`, `"sha512:0101`), "index.digest"},
		{"toc digest short", replace(`"sha256:0202`, `"sha256:02`), "toc.digest"},
		{"index size zero", replace(`"size": 4096`, `"size": 0`), "index.size"},
		{"negative archive", replace(`"archive_size": 1073741824`, `"archive_size": -1`), "archive_size"},
		{"bad prefetch", replace(strings.Repeat("c", 64), strings.Repeat("c", 63)), "prefetch[0]"},
		{"empty store element", replace(`"http://127.0.0.1:8080,`, `"http://127.0.0.1:8080,,`), "empty element"},
		{"env without name", replace(`"EMPTY="`, `"=x"`), "image.env[1]"},
		{"env without =", replace(`"EMPTY="`, `"EMPTY"`), "image.env[1]"},
		{"relative volume", replace(`"/data"`, `"data"`), "image.volumes[0]"},
		{"negative interval", replace(`"interval": 30000000000`, `"interval": -1`), "healthcheck"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Load(tc.data)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Load(%.60q) = %+v, %v; want an error wrapping ErrInvalid", tc.data, c, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Load(%.60q) = %v; want it to mention %q", tc.data, err, tc.want)
			}
		})
	}
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }

func TestMarshalRejectsInvalid(t *testing.T) {
	c := sampleConfig()
	c.Version = 7
	if b, err := c.Marshal(); !errors.Is(err, ErrInvalid) {
		t.Errorf("Marshal() of version 7 = %q, %v; want ErrInvalid", b, err)
	}
}

// FuzzLoad checks that Load never panics, and that whatever it accepts
// re-encodes to a fixed point that it accepts again.
func FuzzLoad(f *testing.F) {
	if b, err := os.ReadFile(filepath.Join("testdata", "config.json")); err == nil {
		f.Add(b)
	}
	c := sampleConfig()
	c.Image = Image{}
	if b, err := c.Marshal(); err == nil {
		f.Add(b)
	}
	f.Add([]byte(`{"version":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Load(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Load() = %v, not wrapping ErrInvalid", err)
			}
			return
		}
		b1, err := c.Marshal()
		if err != nil {
			t.Fatalf("Marshal() of a loaded config = %v", err)
		}
		c2, err := Load(b1)
		if err != nil {
			t.Fatalf("Load(Marshal(Load(data))) = %v", err)
		}
		b2, err := c2.Marshal()
		if err != nil || !bytes.Equal(b1, b2) {
			t.Fatalf("Marshal is not a fixed point: %q, %v; want %q", b2, err, b1)
		}
	})
}

func BenchmarkLoad(b *testing.B) {
	data, err := sampleConfig().Marshal()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Load(data); err != nil {
			b.Fatal(err)
		}
	}
}
