package harness

import (
	"archive/tar"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseMetrics(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    counters
		wantErr bool
	}{
		{
			name: "chunkstore",
			in: `# HELP bootfs_chunkstore_http_requests_total HTTP requests by method and status code.
# TYPE bootfs_chunkstore_http_requests_total counter
bootfs_chunkstore_http_requests_total{method="GET",code="200"} 64
bootfs_chunkstore_http_requests_total{method="GET",code="404"} 2
bootfs_chunkstore_http_requests_total{method="HEAD",code="200"} 5
bootfs_chunkstore_http_requests_total{method="PUT",code="201"} 9
bootfs_chunkstore_http_requests_total{method="POST",code="200"} 30
bootfs_chunkstore_http_batch_chunks_total 400
bootfs_chunkstore_http_in_flight 1
bootfs_chunkstore_http_sent_bytes_total 1830829
bootfs_chunkstore_http_received_bytes_total 77
bootfs_chunkstore_store_bytes_total 99
`,
			want: counters{Requests: 101, Bytes: 1830829},
		},
		{name: "no requests yet", in: "bootfs_chunkstore_http_sent_bytes_total 0\n", want: counters{}},
		{name: "not chunkstore", in: "go_goroutines 7\n", wantErr: true},
		{name: "bad number", in: "bootfs_chunkstore_http_sent_bytes_total x\n", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseMetrics(strings.NewReader(tc.in))
			if (err != nil) != tc.wantErr || (err == nil && got != tc.want) {
				t.Errorf("parseMetrics() = %+v, %v; want %+v, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestCountersSubDiscountsTheScrape(t *testing.T) {
	before := counters{Requests: 10, Bytes: 5000, scrape: 1200}
	after := counters{Requests: 14, Bytes: 5000 + 1200 + 300000}
	if got, want := after.sub(before), (counters{Requests: 3, Bytes: 300000}); got != want {
		t.Errorf("sub = %+v, want %+v", got, want)
	}
}

func TestParseVmHWM(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     int64
	}{
		{"status", "Name:\tboot\nVmPeak:\t 1000 kB\nVmHWM:\t   17200 kB\nVmRSS:\t 100 kB\n", 17200 << 10},
		{"missing", "Name:\tboot\n", 0},
		{"odd unit", "VmHWM:\t 12 MB\n", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := parseVmHWM(tc.in); got != tc.want {
				t.Errorf("parseVmHWM(%q) = %d, want %d", tc.in, got, tc.want)
			}
		})
	}
}

func TestPeakRSSOfThisProcess(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("no /proc")
	}
	w := watchRSS(os.Getpid)
	buf := make([]byte, 32<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	time.Sleep(50 * time.Millisecond)
	got := w.Stop()
	if got < int64(len(buf)) {
		t.Errorf("peak RSS after touching %d bytes = %d", len(buf), got)
	}
	_ = buf[len(buf)-1]
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []int64
		want int64
	}{
		{"one", []int64{7}, 7},
		{"odd", []int64{9, 1, 5}, 5},
		{"even", []int64{4, 1, 10, 2}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := median(tc.in); got != tc.want {
				t.Errorf("median(%v) = %d, want %d", tc.in, got, tc.want)
			}
		})
	}
}

func TestParseConvertBench(t *testing.T) {
	out := `goos: linux
BenchmarkConvertDir/mkimage-j1-2         	       1	2000000000 ns/op	 185.00 MB/s	 1234 B/op	 5 allocs/op
BenchmarkConvertDir/casync-make-2        	       1	4500000000 ns/op	  82.20 MB/s
BenchmarkConvertDir/desync-tar-j2-2      	       1	3000000000 ns/op	 123.30 MB/s
PASS
`
	got := parseConvertBench(out)
	want := []ConvertRow{{"mkimage-j1", 2, 185}, {"casync-make", 4.5, 82.2}, {"desync-tar-j2", 3, 123.3}}
	if len(got) != len(want) {
		t.Fatalf("parseConvertBench = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("row %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestImageUser(t *testing.T) {
	rootfs := t.TempDir()
	os.Mkdir(filepath.Join(rootfs, "etc"), 0o755)
	os.WriteFile(filepath.Join(rootfs, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/bash\npostgres:x:104:107:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n"), 0o644)
	os.WriteFile(filepath.Join(rootfs, "etc/group"), []byte("root:x:0:\nssl-cert:x:108:postgres\npostgres:x:107:\nwheel:x:10:alice,postgres,bob\naudio:x:29:alice\n"), 0o644)
	for _, tc := range []struct {
		name, user string
		uid, gid   int
		groups     []int
		home       string
		wantErr    bool
	}{
		{"name", "postgres", 104, 107, []int{107, 108, 10}, "/var/lib/postgresql", false},
		{"uid", "0", 0, 0, []int{0}, "/root", false},
		{"missing", "nobody", 0, 0, nil, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, err := imageUser(rootfs, tc.user)
			if (err != nil) != tc.wantErr {
				t.Fatalf("imageUser(%q) = %+v, %v; want error %v", tc.user, u, err, tc.wantErr)
			}
			if err == nil && (u.UID != tc.uid || u.GID != tc.gid || u.Home != tc.home || !slices.Equal(u.Groups, tc.groups)) {
				t.Errorf("imageUser(%q) = %+v; want %d, %d, groups %v, home %q", tc.user, u, tc.uid, tc.gid, tc.groups, tc.home)
			}
		})
	}
}

func TestResolve(t *testing.T) {
	base := Options{Bin: "b", Work: "w", Out: "o"}
	for _, tc := range []struct {
		name    string
		change  func(*Options)
		wantErr string
		check   func(*testing.T, Options)
	}{
		{name: "defaults", check: func(t *testing.T, o Options) {
			if o.Samples != 2 || len(o.Images) != 4 || !slices.Equal(o.Modes, DefaultModes) || slices.Contains(o.Modes, ModeSaveLoad) || len(o.Networks) != len(Networks)-1 || !slices.Equal(o.Extras, DefaultExtras) {
				t.Errorf("defaults = %+v", o)
			}
		}},
		{name: "quick", change: func(o *Options) { o.Quick = true }, check: func(t *testing.T, o Options) {
			if len(o.Images) != 1 || o.Images[0] != "busybox" || len(o.Networks) != 2 {
				t.Errorf("quick = %+v", o)
			}
		}},
		{name: "bad image", change: func(o *Options) { o.Images = []string{"alpine"} }, wantErr: `unknown image "alpine"`},
		{name: "bad mode", change: func(o *Options) { o.Modes = []string{"lazy"} }, wantErr: `unknown mode "lazy"`},
		{name: "bad network", change: func(o *Options) { o.Networks = []string{"5g"} }, wantErr: `unknown network "5g"`},
		{name: "bad extra", change: func(o *Options) { o.Extras = []string{"gpu"} }, wantErr: `unknown extra measurement "gpu"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := base
			if tc.change != nil {
				tc.change(&o)
			}
			err := o.resolve()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("resolve() = %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, o)
		})
	}
}

// TestReport renders a report from made-up runs and checks the table
// cells, the goals and the files.
func TestReport(t *testing.T) {
	r := &Report{Samples: 3, Images: []string{"python"}, Modes: []string{ModeRegistry, ModeCasync, ModeCold, ModeWarm, ModePrefetch, ModeEstargz, ModeEstargzOpt, ModeBootfsRegistry, ModeAgent},
		Networks: []string{"20ms-100mbit"}, Prefetch: "not available: test",
		Sizes: []ImageSize{{Image: "python", SaveBytes: 100e6, BootBytes: 9e6, StoreBytes: 40e6}}}
	add := func(mode string, ready time.Duration, image, store int64, err string) {
		r.add(Sample{Image: "python", Network: "20ms-100mbit", Mode: mode, Ready: ready, ImageBytes: image, StoreBytes: store, Requests: 3, RSS: 20e6, Err: err, InDocker: ready / 4})
	}
	for _, d := range []time.Duration{10, 12, 11} {
		add(ModeRegistry, d*time.Second, 100e6, 0, "")
	}
	for _, d := range []time.Duration{3000, 2000, 2500} {
		add(ModeCold, d*time.Millisecond, 9e6, 1e6, "")
	}
	add(ModeCasync, 5*time.Second, 0, 2e6, "")
	add(ModeCasync, 0, 0, 0, "casync mount exited")
	add(ModeWarm, time.Second, 0, 0, "")
	add(ModeEstargz, 4*time.Second, 5e6, 0, "")
	add(ModeEstargzOpt, 3*time.Second, 6e6, 0, "")
	add(ModeBootfsRegistry, 3*time.Second, 9e6, 1e6, "")
	add(ModeAgent, 2600*time.Millisecond, 9e6, 1e6, "")
	r.Pushes = []PushRow{{Image: "python", Seconds: 1.5, NewChunks: 599, Written: 17e6, Requests: 21, Reads: 40}}
	r.add(Sample{Image: "python", Network: "20ms-100mbit", Mode: ModePrefetch, Skipped: "not available: test"})
	r.NodeImage, r.NodeNetwork, r.NodeContainers = "python", "20ms-100mbit", 8
	r.Node = []NodeRow{{System: ModeRegistry, Ready: 9 * time.Second, Bytes: 66e6, Requests: 5},
		{System: ModeCold, Ready: 4 * time.Second, Bytes: 20e6, Requests: 200, RSS: 300e6},
		{System: ModeEstargz, Err: "ctr run: boom"},
		{System: ModeAgent, Ready: 3 * time.Second, Bytes: 10.1e6, Requests: 3, RSS: 80e6}}
	md := r.Markdown([]string{"x-ready.png"})
	for _, want := range []string{
		"| python | 11.00 s (10.00–12.00) | 5.00 s, 1 failed | 2.50 s (2.00–3.00) | 1.00 s | n/a |",
		"| python | 100.0 MB (100.0%), 3 req | 2.0 MB (2.0%), 3 req | 10.0 MB (10.0%), 3 req |",
		"## Headline: time to ready at 20ms-100mbit",
		"| python | 11.00 s (10.00–12.00) | 4.00 s (2.8×) | 3.00 s (3.7×) | 2.50 s (4.4×) | 3.00 s (3.7×) | n/a | 1.00 s (11.0×) | 0.62× | – | 1.20× |",
		"bootfs with the registry as its store within 1.1× of bootfs with the chunk server to ready at 20ms-100mbit, python: **missed** (1.20×: 3.00 s against 2.50 s; the boot image was in Docker after 0.75 s against 0.62 s)",
		"node agent, 8 containers fetch within 1.02× of one container's bytes: **met** (1.010×: 10.1 MB against 10.0 MB)",
		"node agent, 8 containers' requests within 1.02× of one container's: **met** (1.000×: 3 against 3)",
		"node agent's RSS for 8 containers ≤ 64 MB + 4 MB per container after the first (96.5 MB): **met** (80.0 MB; the 8 boots of bootfs-cold: 300.0 MB)",
		"| bootfs-agent | 3.00 s | 10.1 MB | 3 | 80.0 MB |",
		"| python | 1.50 | 599 | 17.0 MB | 21 | 40 |",
		"bootfs-cold ≤ 0.8× estargz to ready at 20ms-100mbit, python: **met** (0.62×: 2.50 s against 4.00 s)",
		"bootfs-cold fetches ≤ estargz's bytes, python: **missed** (10.0 MB against 5.0 MB)",
		"bootfs-cold's requests within 2× of estargz's, python: **met** (3 against 3)",
		"bootfs-prefetch ≤ 0.8× estargz-optimized to ready at 20ms-100mbit, python: not measured",
		"bootfs cold within 1.5× of its floor at 20ms-100mbit (warm 1.00 s + 10.0 MB at the link's rate = 1.80 s), python: **met** (1.39×: 2.50 s)",
		"bootfs cold within 1.3× of its floor at 20ms-100mbit (warm 1.00 s + 10.0 MB at the link's rate = 1.80 s), python: **missed** (1.39×: 2.50 s)",
		"faster to ready than a registry pull at 20ms-100mbit for python: **met** (4.4×",
		"fetches ≤ 10% of the image's bytes, python: **met** (10.0%",
		"bootfs cold beats casync mount, python on 20ms-100mbit: **met**",
		"for postgres: not measured",
		"python, 20ms-100mbit, casync-mount failed: casync mount exited",
		"bootfs-prefetch: not available: test",
		"![x-ready](x-ready.png)",
		"## A node: 8 containers of python at once (20ms-100mbit)",
		"| registry-pull | 9.00 s | 66.0 MB | 5 | – |",
		"| bootfs-cold | 4.00 s | 20.0 MB | 200 | 300.0 MB |",
		"| estargz | failed | | | |",
		"node scenario, estargz failed: ctr run: boom",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	dir := t.TempDir()
	file, err := r.Write(dir)
	if err != nil {
		t.Fatal(err)
	}
	stem := strings.TrimSuffix(filepath.Base(file), ".md")
	for _, f := range []string{stem + ".md", stem + ".json", stem + "-headline.png", stem + "-ready-20ms-100mbit.png", stem + "-fetched.png"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || fi.Size() == 0 {
			t.Errorf("Write made no %s: %v", f, err)
		}
	}
	again := t.TempDir()
	file2, err := Render(filepath.Join(dir, stem+".json"), again)
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	if a, b := readFile(t, file), readFile(t, file2); a != b {
		t.Errorf("Render of the raw runs gave a different report:\n%s\nwant:\n%s", b, a)
	}
	png, _ := os.ReadFile(filepath.Join(dir, stem+"-fetched.png"))
	if !strings.HasPrefix(string(png), "\x89PNG") {
		t.Errorf("%s-fetched.png is not a PNG", stem)
	}
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestParseAccessLog counts the requests and bytes of docker-registry's
// access log (the combined format) and skips its other lines.
func TestParseAccessLog(t *testing.T) {
	log := `time="2026-12-04T20:15:00Z" level=warning msg="No HTTP secret provided"
127.0.0.1 - - [04/Dec/2026:20:15:01 +0000] "GET /v2/ HTTP/1.1" 401 87 "" "docker/20.10.24+dfsg1 go/go1.19.8"
127.0.0.1 - - [04/Dec/2026:20:15:01 +0000] "HEAD /v2/bootfs-bench/busybox/manifests/orig HTTP/1.1" 200 529 "" "docker/20.10.24+dfsg1"
127.0.0.1 - - [04/Dec/2026:20:15:01 +0000] "GET /v2/bootfs-bench/busybox/blobs/sha256:0c1e HTTP/1.1" 200 7012345 "" "docker/20.10.24+dfsg1"
127.0.0.1 - - [04/Dec/2026:20:15:01 +0000] "GET /v2/bootfs-bench/busybox/blobs/sha256:0c1e HTTP/1.1" 206 4096 "" "Go-http-client/1.1"
127.0.0.1 - - [04/Dec/2026:20:15:01 +0000] "PUT /v2/bootfs-bench/busybox/manifests/orig HTTP/1.1" 201 0 "" "docker/20.10.24+dfsg1"
127.0.0.1 - - [04/Dec/2026:20:15:02 +0000] "GET /v2/bootfs-bench/busybox/blobs/sha256:dead HTTP/1.1" 404 - "" "x"
`
	f := filepath.Join(t.TempDir(), "access.log")
	if err := os.WriteFile(f, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &registry{log: f}
	got, err := r.since(0)
	if err != nil {
		t.Fatal(err)
	}
	if got.Requests != 5 || got.Bytes != 87+529+7012345+4096 {
		t.Errorf("since(0) = %d requests, %d bytes; want 5, %d", got.Requests, got.Bytes, 87+529+7012345+4096)
	}
	// Docker's GETs and HEADs are a pull, the others' boot reading
	// chunks; the PUT is an upload.
	a, err := r.accessSince(0)
	if err != nil {
		t.Fatal(err)
	}
	want := access{Docker: counters{Requests: 3, Bytes: 87 + 529 + 7012345}, Others: counters{Requests: 2, Bytes: 4096}, Uploads: 1}
	if a != want {
		t.Errorf("accessSince(0) = %+v; want %+v", a, want)
	}
	mark := int64(strings.Index(log, "127.0.0.1 - - [04/Dec/2026:20:15:01 +0000] \"GET /v2/bootfs-bench/busybox/blobs/sha256:0c1e HTTP/1.1\" 206"))
	if got, _ := r.since(mark); got.Requests != 2 || got.Bytes != 4096 {
		t.Errorf("since(%d) = %+v; want 2 requests, 4096 bytes", mark, got)
	}
}

// TestColdStartGoals checks issue 20's postgres goals: the times at 20 ms,
// the request count, and the far network's ratio against the pull.
func TestColdStartGoals(t *testing.T) {
	r := &Report{Samples: 1, Images: []string{"postgres"}, Modes: []string{ModeRegistry, ModeCold, ModePrefetch},
		Networks: []string{"20ms-100mbit", "100ms-100mbit"}}
	add := func(net, mode string, ready time.Duration, requests int64) {
		r.add(Sample{Image: "postgres", Network: net, Mode: mode, Ready: ready, ImageBytes: 9e6, StoreBytes: 20e6, Requests: requests})
	}
	add("20ms-100mbit", ModeCold, 3500*time.Millisecond, 130)
	add("20ms-100mbit", ModePrefetch, 3*time.Second, 40)
	add("100ms-100mbit", ModeRegistry, 30*time.Second, 5)
	add("100ms-100mbit", ModeCold, 12*time.Second, 130)
	got := strings.Join(r.Goals(), "\n")
	for _, want := range []string{
		"bootfs-cold ready ≤ 3.60 s at 20ms-100mbit, postgres: **met** (3.50 s)",
		"bootfs-prefetch ready ≤ 2.90 s at 20ms-100mbit, postgres: **missed** (3.00 s)",
		"bootfs cold makes ≤ 120 requests at 20ms-100mbit, postgres: **missed** (130, boot image included)",
		"bootfs cold ≥ 3× faster to ready than a registry pull at 100ms-100mbit, postgres: **missed** (2.5×: 12.00 s against 30.00 s)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("goals lack %q:\n%s", want, got)
		}
	}
}

// TestNetworkRuns: the far network runs only postgres's pull and cold
// start, and casync mount at 20 ms only the small images.
func TestNetworkRuns(t *testing.T) {
	far, _ := network("100ms-100mbit")
	slow, _ := network("20ms-100mbit")
	for _, tc := range []struct {
		n         Network
		img, mode string
		want      bool
	}{
		{far, "postgres", ModeCold, true},
		{far, "postgres", ModeRegistry, true},
		{far, "postgres", ModeEstargz, false},
		{far, "python", ModeCold, false},
		{slow, "postgres", ModeCasync, false},
		{slow, "python", ModeCasync, true},
		{slow, "postgres", ModeCold, true},
	} {
		if got := tc.n.Runs(tc.img, tc.mode); got != tc.want {
			t.Errorf("%s runs %s %s = %v, want %v", tc.n.Name, tc.img, tc.mode, got, tc.want)
		}
	}
}

// TestParseBootStats reads boot's stats line as slog's text handler
// writes it, after the workload's own output, and takes the last one.
func TestParseBootStats(t *testing.T) {
	out := "hello, world\n" +
		`time=2026-12-05T18:03:24.000Z level=INFO msg="bootfs stats" chunks_fetched=1 bytes_fetched=2 batches=3` + "\n" +
		`time=2026-12-05T18:03:25.000Z level=INFO msg="bootfs stats" chunks_fetched=542 bytes_fetched=58137952 cache_hits=0 memory_hits=9 retries=0 errors=0 start_to_exec_ms=120 batches=244 read_ahead_chunks=80 read_ahead_bytes=8969117 read_ahead_wasted_chunks=20 read_ahead_wasted_bytes=1981368 prefetch_unread_bytes=5 network_waits=215 longest_chain=200` + "\n"
	got, ok := parseBootStats(out)
	want := BootStats{ChunksFetched: 542, BytesFetched: 58137952, Batches: 244, ReadAheadBytes: 8969117, ReadAheadWastedBytes: 1981368, PrefetchUnreadBytes: 5, NetworkWaits: 215, LongestChain: 200}
	if !ok || got != want {
		t.Fatalf("parseBootStats = %+v, %v; want %+v", got, ok, want)
	}
	if got.Wasted() != 1981373 {
		t.Errorf("Wasted = %d", got.Wasted())
	}
	if _, ok := parseBootStats("hello, world\nlevel=WARN msg=other\n"); ok {
		t.Error("parseBootStats found stats in output without them")
	}
}

// TestReadAheadReport: the table of boot's counters at 20 ms and the
// read-ahead waste goal, from the runs' stats.
func TestReadAheadReport(t *testing.T) {
	r := &Report{Samples: 2, Images: []string{"postgres"}, Modes: []string{ModeCold, ModePrefetch, ModeAgent}, Networks: []string{"20ms-100mbit"}}
	for _, b := range []BootStats{
		{BytesFetched: 40e6, Batches: 30, ReadAheadWastedBytes: 10e6, NetworkWaits: 50, LongestChain: 12},
		{BytesFetched: 40e6, Batches: 34, ReadAheadWastedBytes: 6e6, NetworkWaits: 70, LongestChain: 16},
	} {
		r.add(Sample{Image: "postgres", Network: "20ms-100mbit", Mode: ModeCold, Ready: 3 * time.Second, StoreBytes: 20e6, Requests: 100, Boot: &b})
	}
	r.add(Sample{Image: "postgres", Network: "20ms-100mbit", Mode: ModePrefetch, Ready: 2 * time.Second, Requests: 40,
		Boot: &BootStats{BytesFetched: 50e6, Batches: 8, ReadAheadWastedBytes: 1e6, PrefetchUnreadBytes: 4e6, LongestChain: 3, NetworkWaits: 9}})
	r.add(Sample{Image: "postgres", Network: "20ms-100mbit", Mode: ModeAgent, Ready: 3 * time.Second, Requests: 90})
	md := r.Markdown(nil)
	for _, want := range []string{
		"## Read-ahead and dependent fetches",
		"| postgres | bootfs-cold | 100 | 32 | 40.0 MB | 8.0 MB (20.0%) | 14 | 60 |",
		"| postgres | bootfs-prefetch | 40 | 8 | 50.0 MB | 5.0 MB (10.0%) | 3 | 9 |",
		"| postgres | bootfs-agent | 90 | not reported | | | | |",
		"bootfs cold's read-ahead waste < 20% of the bytes it fetched at 20ms-100mbit, postgres: **missed** (20.0%: 8.0 MB of 40.0 MB never read)",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

// TestStdinFromFile: ctr run gets the workload's stdin from a file
// bind-mounted read-only, and the command reads it as its stdin.
func TestStdinFromFile(t *testing.T) {
	flags, cmd := stdinFromFile("/w/run.stdin", []string{"sh", "-c", "gcc -x c -o /tmp/hello - && /tmp/hello"})
	if want := []string{"--mount", "type=bind,src=/w/run.stdin,dst=/.bootfs-bench-stdin,options=rbind:ro"}; !slices.Equal(flags, want) {
		t.Errorf("flags = %q, want %q", flags, want)
	}
	// Run the command here with the file where the mount would put it.
	dir := t.TempDir()
	file := filepath.Join(dir, "stdin")
	if err := os.WriteFile(file, []byte("from the file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, cmd = stdinFromFile(file, []string{"sh", "-c", "cat; echo done"})
	cmd[2] = strings.ReplaceAll(cmd[2], ctrStdin, file)
	out, err := exec.Command(cmd[0], cmd[1:]...).Output()
	if err != nil || string(out) != "from the file\ndone\n" {
		t.Errorf("%q: %q, %v", cmd, out, err)
	}
}

// TestArchiveImageName reads the name an export gave the image, whatever
// BENCH_PREFIX that run had, and refuses an archive without one.
func TestArchiveImageName(t *testing.T) {
	dir := t.TempDir()
	write := func(name, index string) string {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		tw := tar.NewWriter(f)
		for _, e := range []struct{ name, body string }{{"oci-layout", `{"imageLayoutVersion":"1.0.0"}`}, {"index.json", index}} {
			tw.WriteHeader(&tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.body))})
			tw.Write([]byte(e.body))
		}
		tw.Close()
		f.Close()
		return f.Name()
	}
	good := write("good.tar", `{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:08","size":594,"annotations":{"io.containerd.image.name":"prep.cache/gcc:estargz","org.opencontainers.image.ref.name":"estargz"}}]}`)
	if got, err := archiveImageName(good); err != nil || got != "prep.cache/gcc:estargz" {
		t.Errorf("archiveImageName = %q, %v", got, err)
	}
	bad := write("bad.tar", `{"schemaVersion":2,"manifests":[]}`)
	if _, err := archiveImageName(bad); err == nil || !strings.Contains(err.Error(), "delete its directory") {
		t.Errorf("archiveImageName of an archive without a name: %v", err)
	}
}

// TestPlan counts the runs as sample makes them: casync mount once, the
// far network only postgres's pull and cold start, casync mount at 20 ms
// only the small images; and the default networks leave 2ms-1gbit out
// while it can still be asked for.
func TestPlan(t *testing.T) {
	o := Options{Bin: "b", Work: "w", Out: "o", Samples: 2, CasyncSamples: 1, Images: []string{"python", "postgres"},
		Modes: []string{ModeRegistry, ModeCold, ModeCasync}, Networks: []string{"loopback", "20ms-100mbit", "100ms-100mbit"}}
	if err := o.resolve(); err != nil {
		t.Fatal(err)
	}
	// loopback 5 + 5, 20 ms 5 + 4, 100 ms postgres 4.
	if p := o.plan(); p.runs != 23 || p.eta <= 0 {
		t.Errorf("plan = %+v, want 23 runs and an estimate", p)
	}
	d := Options{Bin: "b", Work: "w", Out: "o"}
	if err := d.resolve(); err != nil {
		t.Fatal(err)
	}
	if want := []string{"loopback", "20ms-100mbit", "100ms-100mbit"}; !slices.Equal(d.Networks, want) {
		t.Errorf("default networks %q, want %q", d.Networks, want)
	}
	a := Options{Bin: "b", Work: "w", Out: "o", Networks: []string{"2ms-1gbit"}}
	if err := a.resolve(); err != nil {
		t.Errorf("NETWORKS=2ms-1gbit: %v", err)
	}
}

// TestPeakTreeRSS: the node agent's RSS counts the worker it runs, not
// its holder alone.
func TestPeakTreeRSS(t *testing.T) {
	child := exec.Command("sleep", "30")
	if err := child.Start(); err != nil {
		t.Skip("no sleep:", err)
	}
	defer func() { child.Process.Kill(); child.Wait() }()
	self, kid := peakRSS(os.Getpid()), peakRSS(child.Process.Pid)
	if self == 0 || kid == 0 {
		t.Fatalf("no VmHWM: self %d, child %d", self, kid)
	}
	if got := peakTreeRSS(os.Getpid()); got < self+kid {
		t.Errorf("peakTreeRSS = %d, want at least self %d + child %d", got, self, kid)
	}
}
