package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// Report is what a Run measured; Write renders it.
type Report struct {
	Date    time.Time
	Samples int
	// CasyncSamples is how many of the samples ran casync mount.
	CasyncSamples int `json:",omitempty"`
	Images        []string
	Modes         []string
	Networks      []string
	Quick         bool
	Seed          int64
	Machine       string
	// Prefetch says why bootfs-prefetch could not run, or "".
	Prefetch string
	Sizes    []ImageSize
	Runs     []Sample
	Notes    []string

	ConvertTree string
	Convert     []ConvertRow
	Dedup       *DedupReport
	Chunkers    []ChunkerRow
	FUSEImage   string
	FUSE        []FUSERow
	PgVersion   []PgVersionRow

	// Pushes are the mkimage --push of each image (bootfs-registry).
	Pushes []PushRow `json:",omitempty"`

	NodeImage, NodeNetwork string
	NodeContainers         int
	Node                   []NodeRow
}

// ImageSize is an image as a full pull and as bootfs delivers it.
type ImageSize struct {
	Image      string
	SaveBytes  int64 // docker save of the original
	BootBytes  int64 // docker save of the boot image
	StoreBytes int64 // its distinct chunks in the store, compressed
}

// DedupRow is one image's conversion into the shared store.
type DedupRow struct {
	Image       string
	SaveBytes   int64
	CatarBytes  int64
	Chunks      int
	Written     int64 // new compressed bytes this image added to the bootfs store
	StoreBytes  int64 // its distinct chunks in the bootfs store
	CasyncBytes int64 // its distinct chunks in casync's store
}

// DedupReport compares the shared stores with the docker save archives.
type DedupReport struct {
	Rows                     []DedupRow
	SaveTotal, Store, Casync int64
}

func newReport(o Options, prefetch string) *Report {
	r := &Report{Date: time.Now(), Samples: o.Samples, CasyncSamples: o.CasyncSamples, Images: o.Images, Modes: o.Modes,
		Networks: o.Networks, Quick: o.Quick, Prefetch: prefetch}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	dv, _ := docker(context.Background(), "version", "--format", "{{.Server.Version}}")
	r.Machine = fmt.Sprintf("%d CPUs, %.1f GB RAM, Linux %s, Docker %s, %s", runtime.NumCPU(), float64(memTotal())/1e9,
		strings.TrimSpace(string(kernel)), strings.TrimSpace(dv), runtime.Version())
	return r
}

func (r *Report) addImages(ims []*image) {
	for _, im := range ims {
		r.Sizes = append(r.Sizes, ImageSize{Image: im.wl.Name, SaveBytes: im.origSize, BootBytes: im.bootSize, StoreBytes: im.storeBytes})
	}
}

func (r *Report) add(s Sample) { r.Runs = append(r.Runs, s) }

// cell aggregates the runs of one image, network and mode.
type cell struct {
	ok                         []Sample
	errs                       []string
	skipped                    string
	ready, readyMin, readyMax  time.Duration
	fetched, requests, peakRSS int64
	store                      int64         // chunk bytes alone (median)
	image                      time.Duration // until the boot image was in Docker (median)
}

func (r *Report) cell(img, net, mode string) cell {
	var c cell
	var fetched, reqs, store []int64
	var ready, inDocker []time.Duration
	for _, s := range r.Runs {
		if s.Image != img || s.Mode != mode || (net != "" && s.Network != net) {
			continue
		}
		switch {
		case s.Skipped != "":
			c.skipped = s.Skipped
		case s.Err != "":
			c.errs = append(c.errs, s.Err)
		default:
			c.ok = append(c.ok, s)
			ready = append(ready, s.Ready)
			inDocker = append(inDocker, s.InDocker)
			fetched = append(fetched, s.Fetched())
			store = append(store, s.StoreBytes)
			reqs = append(reqs, s.Requests)
			c.peakRSS = max(c.peakRSS, s.RSS)
		}
	}
	if len(ready) > 0 {
		c.ready = median(ready)
		c.readyMin, c.readyMax = slices.Min(ready), slices.Max(ready)
		c.fetched, c.requests, c.store, c.image = median(fetched), median(reqs), median(store), median(inDocker)
	}
	return c
}

// median returns the middle value (the mean of the two middle ones for
// an even count) of a non-empty slice.
func median[T int64 | time.Duration](v []T) T {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func (r *Report) size(img string) ImageSize {
	for _, s := range r.Sizes {
		if s.Image == img {
			return s
		}
	}
	return ImageSize{Image: img}
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }
func mb(n int64) string           { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }

// readyText is a table cell: median (min–max), or why there is none.
func (c cell) readyText() string {
	switch {
	case len(c.ok) > 0:
		s := secs(c.ready)
		if len(c.ok) > 1 {
			s += fmt.Sprintf(" (%.2f–%.2f)", c.readyMin.Seconds(), c.readyMax.Seconds())
		}
		if len(c.errs) > 0 {
			s += fmt.Sprintf(", %d failed", len(c.errs))
		}
		return s
	case len(c.errs) > 0:
		return "failed"
	case c.skipped != "":
		return "n/a"
	}
	return "–"
}

// Markdown renders the report; charts are the PNG names to link.
func (r *Report) Markdown(charts []string) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	title := "bootfs benchmark"
	if r.Quick {
		title += " (quick)"
	}
	p("# %s, %s\n\n", title, r.Date.Format("2006-01-02 15:04"))
	casync := ""
	if r.CasyncSamples > 0 && r.CasyncSamples < r.Samples {
		casync = fmt.Sprintf(" (casync mount, the slowest by far: %d)", r.CasyncSamples)
	}
	p("Machine: %s. %d sample(s) of every cell%s, in shuffled order (seed %d); each cell is the median, with min–max. Made by `bench/run.sh` (see bench/README.md for what each mode does and how it is measured).\n\n", r.Machine, r.Samples, casync, r.Seed)

	r.headline(p, slices.Contains(charts, r.stem()+"-headline.png"))

	p("## Images\n\n| image | docker save | boot image (docker save) | its chunks in the store |\n| --- | ---: | ---: | ---: |\n")
	for _, s := range r.Sizes {
		p("| %s | %s | %s | %s |\n", s.Image, mb(s.SaveBytes), mb(s.BootBytes), mb(s.StoreBytes))
	}

	p("\n## Time to ready\n\nFrom the start of the pull (or mount) until the workload exits successfully, or until a server logs that it is ready.\n")
	for _, n := range r.Networks {
		p("\n### %s\n\n| image |", n)
		for _, m := range r.Modes {
			p(" %s |", m)
		}
		p("\n| --- |%s\n", strings.Repeat(" ---: |", len(r.Modes)))
		for _, img := range r.Images {
			p("| %s |", img)
			for _, m := range r.Modes {
				p(" %s |", r.cell(img, n, m).readyText())
			}
			p("\n")
		}
	}

	p("\n## Bytes fetched\n\nEverything received over the network per run (image archive plus chunks), the share of the original image's docker save size, and the HTTP requests; medians over all networks.\n\n| image |")
	for _, m := range r.Modes {
		p(" %s |", m)
	}
	p("\n| --- |%s\n", strings.Repeat(" ---: |", len(r.Modes)))
	for _, img := range r.Images {
		p("| %s |", img)
		size := r.size(img).SaveBytes
		for _, m := range r.Modes {
			c := r.cell(img, "", m)
			if len(c.ok) == 0 {
				p(" %s |", c.readyText())
				continue
			}
			p(" %s (%.1f%%), %d req |", mb(c.fetched), pct(c.fetched, size), c.requests)
		}
		p("\n")
	}

	p("\n## Peak RSS of the FUSE process\n\nboot (the container's init), the node agent (bootfs-agent: its holder and the worker it runs, each one's peak summed), casync mount or the stargz snapshotter, sampled every 10 ms; the highest over all runs.\n\n| image |")
	fuseModes := slices.DeleteFunc(slices.Clone(r.Modes), func(m string) bool { return m == ModeRegistry || m == ModeSaveLoad })
	for _, m := range fuseModes {
		p(" %s |", m)
	}
	p("\n| --- |%s\n", strings.Repeat(" ---: |", len(fuseModes)))
	for _, img := range r.Images {
		p("| %s |", img)
		for _, m := range fuseModes {
			c := r.cell(img, "", m)
			if len(c.ok) == 0 || c.peakRSS == 0 {
				p(" %s |", c.readyText())
				continue
			}
			p(" %s |", mb(c.peakRSS))
		}
		p("\n")
	}

	r.writeReadAhead(p)

	p("\n## Goals\n\n")
	for _, g := range r.Goals() {
		p("- %s\n", g)
	}

	if len(r.Convert) > 0 {
		p("\n## Conversion throughput\n\n`BenchmarkConvertDir` once on the %s tree (in the page cache), into an empty local store; MB/s of file content.\n\n| tool | seconds | MB/s |\n| --- | ---: | ---: |\n", r.ConvertTree)
		for _, c := range r.Convert {
			p("| %s | %.2f | %.1f |\n", c.Tool, c.Seconds, c.MBps)
		}
	}
	if d := r.Dedup; d != nil {
		p("\n## Store size and dedup\n\nAll images converted into one bootfs store (mkimage, from Docker) and one casync store (`casync make`, from the same trees), against the sum of their docker save archives.\n\n| image | docker save | catar | chunks | new bytes written | its chunks (bootfs) | its chunks (casync) |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		for _, row := range d.Rows {
			p("| %s | %s | %s | %d | %s | %s | %s |\n", row.Image, mb(row.SaveBytes), mb(row.CatarBytes), row.Chunks, mb(row.Written), mb(row.StoreBytes), mb(row.CasyncBytes))
		}
		p("| **all** | %s | | | | **%s** bootfs store (%.1f%%) | **%s** casync store (%.1f%%) |\n", mb(d.SaveTotal), mb(d.Store), pct(d.Store, d.SaveTotal), mb(d.Casync), pct(d.Casync, d.SaveTotal))
	}
	if len(r.Chunkers) > 0 {
		p("\n## buzhash against Rabin\n\nEvery tree converted (`mkimage dir:`, 16k:64k:256k) into a fresh store per chunker, page cache dropped before each.\n\n| chunker | seconds | MB/s | distinct chunks | distinct bytes | dedup | store on disk |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		for _, c := range r.Chunkers {
			p("| %s | %.2f | %.1f | %d | %s | %.1f%% | %s |\n", c.Chunker, c.Seconds, float64(c.CatarBytes)/1e6/c.Seconds, c.Distinct, mb(c.DistinctBytes), 100-pct(c.DistinctBytes, c.CatarBytes), mb(c.StoreBytes))
		}
	}
	if len(r.FUSE) > 0 {
		native := r.FUSE[0]
		p("\n## FUSE metadata and sequential read (%s)\n\n`find` of the whole tree and a read of every file, each after dropping the page cache: the median of %d runs for native and boot mount, one run for casync mount. boot mount's cache was filled by a first read over loopback HTTP (shown as cold read); casync mount reads its store from local disk.\n\n| filesystem | entries | find | vs native | read | MB/s | vs native | peak RSS | cold read |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n", r.FUSEImage, max(r.FUSE[0].Runs, 1))
		for _, f := range r.FUSE {
			rss, cold := "–", "–"
			if f.RSS > 0 {
				rss = mb(f.RSS)
			}
			if f.ColdRead > 0 {
				cold = fmt.Sprintf("%s (%s fetched)", secs(f.ColdRead), mb(f.ColdFetched))
			}
			p("| %s | %d | %s | %.2f× | %s | %.1f | %.0f%% | %s | %s |\n", f.System, f.Entries, secs(f.Find), f.Find.Seconds()/native.Find.Seconds(),
				secs(f.Read), mbps(f.ReadBytes, f.Read), 100*mbps(f.ReadBytes, f.Read)/mbps(native.ReadBytes, native.Read), rss, cold)
		}
	}
	if len(r.PgVersion) > 0 {
		p("\n## postgres --version from an empty cache (loopback HTTP)\n\n| system | time | fetched | requests | share of the image's store bytes | peak RSS |\n| --- | ---: | ---: | ---: | ---: | ---: |\n")
		for _, v := range r.PgVersion {
			p("| %s | %s | %s | %d | %.1f%% of %s | %s |\n", v.System, secs(v.Took), mb(v.Bytes), v.Requests, pct(v.Bytes, v.ImageStore), mb(v.ImageStore), mb(v.RSS))
		}
	}
	if len(r.Pushes) > 0 {
		p("\n## Pushing to the registry store\n\n`mkimage --push` of each image into the harness's registry over loopback, in this order (setup, not timed in any start): a later image finds the chunks of the base it shares with an earlier one (all but busybox are Debian minbase) and uploads only its own. New chunks and their stored bytes are mkimage's, packed into blobs of about 8 MiB; upload requests (POST, PATCH, PUT) and reads (GET, HEAD) are the registry's log.\n\n| image | seconds | new chunks | written | upload requests | reads |\n| --- | ---: | ---: | ---: | ---: | ---: |\n")
		for _, x := range r.Pushes {
			p("| %s | %.2f | %d | %s | %d | %d |\n", x.Image, x.Seconds, x.NewChunks, mb(x.Written), x.Requests, x.Reads)
		}
	}
	if len(r.Node) > 0 {
		p("\n## A node: %d containers of %s at once (%s)\n\nA cold node starts %d containers of one image at the same moment over one shared link: the registry pull pulls once and runs them all; eStargz (plain and optimized) rpulls once and runs them all on the snapshotter's layers; bootfs (bootfs-cold, bootfs-prefetch, bootfs-registry) pulls the boot image once and runs them all on one empty cache volume, shared as on a node, reading the chunk server (the registry for bootfs-registry); the node agent (bootfs-agent) pulls it once and runs them all unprivileged through one agent started with an empty cache. Time until the last is ready; bytes and requests at the registry or the chunk store (bootfs: plus the boot image's pull); the FUSE daemons' peak RSS summed (eStargz: its one snapshotter; bootfs: every container's boot; bootfs-agent: the agent's holder and worker).\n\n| system | all ready | fetched | requests | FUSE daemons' RSS |\n| --- | ---: | ---: | ---: | ---: |\n",
			r.NodeContainers, r.NodeImage, r.NodeNetwork, r.NodeContainers)
		for _, n := range r.Node {
			if n.Err != "" {
				p("| %s | failed | | | |\n", n.System)
				continue
			}
			rss := "–"
			if n.RSS > 0 {
				rss = mb(n.RSS)
			}
			p("| %s | %s | %s | %d | %s |\n", n.System, secs(n.Ready), mb(n.Bytes), n.Requests, rss)
		}
	}
	if len(charts) > 0 {
		p("\n## Charts\n\n")
		for _, c := range charts {
			if strings.HasSuffix(c, "-headline.png") {
				continue // shown with the headline table
			}
			p("![%s](%s)\n", strings.TrimSuffix(c, ".png"), c)
		}
	}
	var notes []string
	if r.Prefetch != "" {
		notes = append(notes, "bootfs-prefetch: "+r.Prefetch)
	}
	notes = append(notes, r.Notes...)
	for _, s := range r.Runs {
		if s.Err != "" {
			notes = append(notes, fmt.Sprintf("%s, %s, %s failed: %s", s.Image, s.Network, s.Mode, oneLine(s.Err)))
		}
	}
	for _, n := range r.Node {
		if n.Err != "" {
			notes = append(notes, fmt.Sprintf("node scenario, %s failed: %s", n.System, oneLine(n.Err)))
		}
	}
	if len(notes) > 0 {
		p("\n## Notes\n\n")
		for _, n := range notes {
			p("- %s\n", n)
		}
	}
	return b.String()
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 400 {
		s = s[:400] + "…"
	}
	return s
}

func pct(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}

func mbps(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / 1e6 / d.Seconds()
}

// headlineNet is the network of the headline table, and headlineModes
// its columns: the baseline, the lazy-pull peer and bootfs.
const headlineNet = "20ms-100mbit"

var headlineModes = []string{ModeRegistry, ModeEstargz, ModeEstargzOpt, ModeCold, ModeBootfsRegistry, ModePrefetch, ModeWarm}

// headlineRatios are the headline's last columns: the first mode's time
// as a share of the second's.
var headlineRatios = [][2]string{{ModeCold, ModeEstargz}, {ModePrefetch, ModeEstargzOpt}, {ModeBootfsRegistry, ModeCold}}

// headline writes the report's first table: time to ready on the
// headline network, each cell with how many times faster than the
// registry pull, and bootfs against eStargz.
func (r *Report) headline(p func(string, ...any), chart bool) {
	if !slices.Contains(r.Networks, headlineNet) {
		return
	}
	p("## Headline: time to ready at %s\n\n", headlineNet)
	p("The baseline is **registry-pull**: `docker pull` of the original image from a registry on the same link, then `docker run` until ready. Each cell is the median time to ready with how many times faster than the baseline; the last three are bootfs's time as a share of eStargz's (below 1 is faster), and bootfs with the registry as its store (bootfs-registry: the boot image pulled from the registry, the chunks read from the same repository) as a share of bootfs with the chunk server (bootfs-cold).\n\n| image |")
	for _, m := range headlineModes {
		p(" %s |", m)
	}
	p(" cold ÷ estargz | prefetch ÷ estargz-optimized | registry store ÷ chunk server |\n| --- |%s\n", strings.Repeat(" ---: |", len(headlineModes)+len(headlineRatios)))
	for _, img := range r.Images {
		base := r.cell(img, headlineNet, ModeRegistry)
		p("| %s |", img)
		for _, m := range headlineModes {
			c := r.cell(img, headlineNet, m)
			if m == ModeRegistry || len(c.ok) == 0 || len(base.ok) == 0 {
				p(" %s |", c.readyText())
				continue
			}
			p(" %s (%.1f×) |", secs(c.ready), base.ready.Seconds()/c.ready.Seconds())
		}
		for _, pair := range headlineRatios {
			a, b := r.cell(img, headlineNet, pair[0]), r.cell(img, headlineNet, pair[1])
			if len(a.ok) == 0 || len(b.ok) == 0 {
				p(" – |")
				continue
			}
			p(" %.2f× |", a.ready.Seconds()/b.ready.Seconds())
		}
		p("\n")
	}
	if chart {
		p("\n![%s-headline](%s-headline.png)\n", r.stem(), r.stem())
	}
	p("\n")
}

// Goals checks the targets against the measurements; each line
// says met, missed or not measured, with the numbers.
func (r *Report) Goals() []string {
	var g []string
	mark := func(ok bool) string {
		if ok {
			return "**met**"
		}
		return "**missed**"
	}
	const slow = "20ms-100mbit"
	for _, t := range []struct {
		img  string
		goal float64
	}{{"postgres", 5}, {"python", 3}, {"gcc", 3}} {
		pull, cold := r.cell(t.img, slow, ModeRegistry), r.cell(t.img, slow, ModeCold)
		if len(pull.ok) == 0 || len(cold.ok) == 0 {
			g = append(g, fmt.Sprintf("bootfs cold ≥ %.0f× faster to ready than a registry pull at %s for %s: not measured", t.goal, slow, t.img))
			continue
		}
		x := pull.ready.Seconds() / cold.ready.Seconds()
		g = append(g, fmt.Sprintf("bootfs cold ≥ %.0f× faster to ready than a registry pull at %s for %s: %s (%.1f×: %s against %s)", t.goal, slow, t.img, mark(x >= t.goal), x, secs(cold.ready), secs(pull.ready)))
	}
	for _, img := range r.Images {
		for _, t := range []struct{ bootfs, peer string }{{ModeCold, ModeEstargz}, {ModePrefetch, ModeEstargzOpt}} {
			b, e := r.cell(img, slow, t.bootfs), r.cell(img, slow, t.peer)
			if len(b.ok) == 0 || len(e.ok) == 0 {
				g = append(g, fmt.Sprintf("%s ≤ 0.8× %s to ready at %s, %s: not measured", t.bootfs, t.peer, slow, img))
				continue
			}
			x := b.ready.Seconds() / e.ready.Seconds()
			g = append(g, fmt.Sprintf("%s ≤ 0.8× %s to ready at %s, %s: %s (%.2f×: %s against %s)", t.bootfs, t.peer, slow, img, mark(x <= 0.8), x, secs(b.ready), secs(e.ready)))
			g = append(g, fmt.Sprintf("%s fetches ≤ %s's bytes, %s: %s (%s against %s)", t.bootfs, t.peer, img, mark(b.fetched <= e.fetched), mb(b.fetched), mb(e.fetched)))
			g = append(g, fmt.Sprintf("%s's requests within 2× of %s's, %s: %s (%d against %d)", t.bootfs, t.peer, img, mark(b.requests <= 2*e.requests), b.requests, e.requests))
		}
	}
	for _, img := range r.Images {
		o, c := r.cell(img, slow, ModeBootfsRegistry), r.cell(img, slow, ModeCold)
		if len(o.ok) == 0 || len(c.ok) == 0 {
			if slices.Contains(r.Modes, ModeBootfsRegistry) {
				g = append(g, fmt.Sprintf("bootfs with the registry as its store within 1.1× of bootfs with the chunk server to ready at %s, %s: not measured", slow, img))
			}
			continue
		}
		x := o.ready.Seconds() / c.ready.Seconds()
		g = append(g, fmt.Sprintf("bootfs with the registry as its store within 1.1× of bootfs with the chunk server to ready at %s, %s: %s (%.2f×: %s against %s; the boot image was in Docker after %s against %s)",
			slow, img, mark(x <= 1.1), x, secs(o.ready), secs(c.ready), secs(o.image), secs(c.image)))
	}
	g = append(g, r.nodeGoals(mark)...)
	if n, err := network(slow); err == nil && n.BitsPerSecond > 0 {
		for _, img := range r.Images {
			cold, warm := r.cell(img, slow, ModeCold), r.cell(img, slow, ModeWarm)
			if len(cold.ok) == 0 || len(warm.ok) == 0 {
				continue
			}
			floor := warm.ready + time.Duration(float64(cold.fetched)*8/float64(n.BitsPerSecond)*float64(time.Second))
			x := cold.ready.Seconds() / floor.Seconds()
			for _, limit := range []float64{1.5, 1.3} {
				g = append(g, fmt.Sprintf("bootfs cold within %.1f× of its floor at %s (warm %s + %s at the link's rate = %s), %s: %s (%.2f×: %s)",
					limit, slow, secs(warm.ready), mb(cold.fetched), secs(floor), img, mark(x <= limit), x, secs(cold.ready)))
			}
		}
	}
	g = append(g, r.coldStartGoals(mark)...)
	for _, img := range r.Images {
		if b, ok := r.bootCell(img, slow, ModeCold); ok {
			x := pct(b.Wasted(), b.BytesFetched)
			g = append(g, fmt.Sprintf("bootfs cold's read-ahead waste < 20%% of the bytes it fetched at %s, %s: %s (%.1f%%: %s of %s never read)", slow, img, mark(x < 20), x, mb(b.Wasted()), mb(b.BytesFetched)))
		}
	}
	for _, img := range r.Images {
		c := r.cell(img, "", ModeCold)
		if len(c.ok) == 0 {
			continue
		}
		size := r.size(img).SaveBytes
		g = append(g, fmt.Sprintf("bootfs cold fetches ≤ 10%% of the image's bytes, %s: %s (%.1f%%: %s of %s, boot image included; the chunks alone %.1f%%)",
			img, mark(pct(c.fetched, size) <= 10), pct(c.fetched, size), mb(c.fetched), mb(size), pct(c.store, size)))
	}
	for _, img := range r.Images {
		for _, n := range r.Networks {
			c, k := r.cell(img, n, ModeCold), r.cell(img, n, ModeCasync)
			if len(c.ok) == 0 || len(k.ok) == 0 {
				continue
			}
			g = append(g, fmt.Sprintf("bootfs cold beats casync mount, %s on %s: %s (%s against %s)", img, n, mark(c.ready < k.ready), secs(c.ready), secs(k.ready)))
		}
	}
	for _, v := range r.PgVersion {
		if v.System == "bootfs" {
			g = append(g, fmt.Sprintf("`postgres --version` fetches ≤ 10%% of the image's store bytes: %s (%.1f%%, %d requests)", mark(pct(v.Bytes, v.ImageStore) <= 10), pct(v.Bytes, v.ImageStore), v.Requests))
		}
	}
	if len(r.FUSE) >= 2 {
		native, boot := r.FUSE[0], r.FUSE[1]
		x := boot.Find.Seconds() / native.Find.Seconds()
		g = append(g, fmt.Sprintf("`find` on boot mount with a warm cache ≤ 2× native: %s (%.2f×)", mark(x <= 2), x))
		y := mbps(boot.ReadBytes, boot.Read) / mbps(native.ReadBytes, native.Read)
		g = append(g, fmt.Sprintf("sequential read on boot mount with a warm cache ≥ 50%% of native: %s (%.0f%%)", mark(y >= 0.5), 100*y))
	}
	var peak int64
	for _, s := range r.Runs {
		if s.Err == "" && (s.Mode == ModeCold || s.Mode == ModeWarm || s.Mode == ModePrefetch || s.Mode == ModeBootfsRegistry) {
			peak = max(peak, s.RSS)
		}
	}
	if peak > 0 {
		g = append(g, fmt.Sprintf("boot's RSS ≤ 64 MB: %s (highest peak over all runs: %s)", mark(peak <= 64<<20), mb(peak)))
	}
	return g
}

// coldStartGoals checks issue 20's targets for postgres: time to ready
// cold and with the prefetch list at 20 ms, the requests of a cold start,
// and at 100 ms still 3× ahead of the registry pull.
func (r *Report) coldStartGoals(mark func(bool) string) []string {
	const img, slow, far = "postgres", "20ms-100mbit", "100ms-100mbit"
	var g []string
	for _, t := range []struct {
		mode  string
		limit time.Duration
	}{{ModeCold, 3600 * time.Millisecond}, {ModePrefetch, 2900 * time.Millisecond}} {
		if c := r.cell(img, slow, t.mode); len(c.ok) > 0 {
			g = append(g, fmt.Sprintf("%s ready ≤ %s at %s, %s: %s (%s)", t.mode, secs(t.limit), slow, img, mark(c.ready <= t.limit), secs(c.ready)))
		}
	}
	if c := r.cell(img, slow, ModeCold); len(c.ok) > 0 {
		g = append(g, fmt.Sprintf("bootfs cold makes ≤ 120 requests at %s, %s: %s (%d, boot image included)", slow, img, mark(c.requests <= 120), c.requests))
	}
	if pull, cold := r.cell(img, far, ModeRegistry), r.cell(img, far, ModeCold); len(pull.ok) > 0 && len(cold.ok) > 0 {
		x := pull.ready.Seconds() / cold.ready.Seconds()
		g = append(g, fmt.Sprintf("bootfs cold ≥ 3× faster to ready than a registry pull at %s, %s: %s (%.1f×: %s against %s)", far, img, mark(x >= 3), x, secs(cold.ready), secs(pull.ready)))
	}
	return g
}

// agentRSSGoal is the node agent's RSS goal for n containers (issue
// 21): 64 MB, and 4 MB for every container after the first.
func agentRSSGoal(n int) int64 { return 64<<20 + int64(max(n-1, 0))*4<<20 }

// nodeGoals checks the node agent in the node scenario: what the store
// sent within 1.02× of one container's (the bootfs-agent runs on the
// same image and network), and its RSS against agentRSSGoal, beside the
// sum of the boots of bootfs-cold.
func (r *Report) nodeGoals(mark func(bool) string) []string {
	var agent, cold *NodeRow
	for i := range r.Node {
		switch n := &r.Node[i]; {
		case n.Err != "":
		case n.System == ModeAgent:
			agent = n
		case n.System == ModeCold:
			cold = n
		}
	}
	if agent == nil {
		return nil
	}
	var g []string
	one := r.cell(r.NodeImage, r.NodeNetwork, ModeAgent)
	if len(one.ok) == 0 {
		g = append(g, fmt.Sprintf("node agent, %d containers fetch within 1.02× of one container's bytes and requests: not measured (no bootfs-agent run of %s on %s)", r.NodeContainers, r.NodeImage, r.NodeNetwork))
	} else {
		xb, xr := float64(agent.Bytes)/float64(max(one.fetched, 1)), float64(agent.Requests)/float64(max(one.requests, 1))
		g = append(g, fmt.Sprintf("node agent, %d containers fetch within 1.02× of one container's bytes: %s (%.3f×: %s against %s)", r.NodeContainers, mark(xb <= 1.02), xb, mb(agent.Bytes), mb(one.fetched)))
		g = append(g, fmt.Sprintf("node agent, %d containers' requests within 1.02× of one container's: %s (%.3f×: %d against %d)", r.NodeContainers, mark(xr <= 1.02), xr, agent.Requests, one.requests))
	}
	boots := "bootfs-cold not measured"
	if cold != nil && cold.RSS > 0 {
		boots = fmt.Sprintf("the %d boots of bootfs-cold: %s", r.NodeContainers, mb(cold.RSS))
	}
	goal := agentRSSGoal(r.NodeContainers)
	g = append(g, fmt.Sprintf("node agent's RSS for %d containers ≤ 64 MB + 4 MB per container after the first (%s): %s (%s; %s)", r.NodeContainers, mb(goal), mark(agent.RSS > 0 && agent.RSS <= goal), mb(agent.RSS), boots))
	return g
}

// Write writes the report as OUT/<date>.md with its charts beside it and
// the raw runs as OUT/<date>.json, and returns the Markdown file's path.
func (r *Report) Write(out string) (string, error) {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return "", err
	}
	stem := r.stem()
	var charts []string
	if slices.Contains(r.Networks, headlineNet) {
		var modes []string
		for _, m := range headlineModes {
			if slices.Contains(r.Modes, m) {
				modes = append(modes, m)
			}
		}
		name := stem + "-headline.png"
		if err := r.chart(filepath.Join(out, name), "time to ready, "+headlineNet+" (s, median)", modes, func(img, m string) (float64, bool) {
			c := r.cell(img, headlineNet, m)
			return c.ready.Seconds(), len(c.ok) > 0
		}); err != nil {
			return "", err
		}
		charts = append(charts, name)
	}
	for _, n := range r.Networks {
		name := fmt.Sprintf("%s-ready-%s.png", stem, n)
		if err := r.chart(filepath.Join(out, name), "time to ready, "+n+" (s, median)", r.Modes, func(img, m string) (float64, bool) {
			c := r.cell(img, n, m)
			return c.ready.Seconds(), len(c.ok) > 0
		}); err != nil {
			return "", err
		}
		charts = append(charts, name)
	}
	name := stem + "-fetched.png"
	if err := r.chart(filepath.Join(out, name), "bytes fetched (MB, median over networks)", r.Modes, func(img, m string) (float64, bool) {
		c := r.cell(img, "", m)
		return float64(c.fetched) / 1e6, len(c.ok) > 0
	}); err != nil {
		return "", err
	}
	charts = append(charts, name)
	raw, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(out, stem+".json"), raw, 0o644); err != nil {
		return "", err
	}
	file := filepath.Join(out, stem+".md")
	return file, os.WriteFile(file, []byte(r.Markdown(charts)), 0o644)
}

// palette colours the modes in every chart alike, in AllModes' order.
var palette = []color.Color{
	color.RGBA{0x99, 0x99, 0x99, 0xff}, // registry pull
	color.RGBA{0xcc, 0x79, 0xa7, 0xff}, // estargz
	color.RGBA{0xd5, 0x5e, 0x00, 0xff}, // estargz optimized
	color.RGBA{0x00, 0x72, 0xb2, 0xff}, // bootfs cold
	color.RGBA{0x00, 0x3f, 0x7f, 0xff}, // bootfs registry store
	color.RGBA{0x7f, 0x3f, 0xbf, 0xff}, // bootfs agent
	color.RGBA{0x00, 0x9e, 0x73, 0xff}, // prefetch
	color.RGBA{0x56, 0xb4, 0xe9, 0xff}, // warm
	color.RGBA{0xe6, 0x9f, 0x00, 0xff}, // casync
	color.RGBA{0x44, 0x44, 0x44, 0xff}, // save-load
}

// modeColor is m's colour; a mode of an older report that this version
// does not know is black.
func modeColor(m string) color.Color {
	if i := slices.Index(AllModes, m); i >= 0 {
		return palette[i%len(palette)]
	}
	return color.Black
}

// stem is the name of the report's files, without extension.
func (r *Report) stem() string {
	stem := r.Date.Format("2006-01-02-1504")
	if r.Quick {
		stem += "-quick"
	}
	return stem
}

// chart draws a grouped bar chart: a group per image, a bar per mode.
func (r *Report) chart(file, title string, modes []string, value func(img, mode string) (float64, bool)) error {
	p := plot.New()
	p.Title.Text = title
	// Top right, above the bars: room over the tallest for the legend's
	// rows, so that it covers none.
	p.Legend.Top = true
	p.Y.Min = 0
	top := 0.0
	width := vg.Points(float64(90) / float64(max(1, len(modes))))
	for i, m := range modes {
		vals := make(plotter.Values, len(r.Images))
		any := false
		for j, img := range r.Images {
			if v, ok := value(img, m); ok {
				vals[j], any = v, true
				top = max(top, v)
			}
		}
		if !any {
			continue
		}
		bars, err := plotter.NewBarChart(vals, width)
		if err != nil {
			return err
		}
		bars.Color = modeColor(m)
		bars.LineStyle.Width = 0
		bars.Offset = width * vg.Length(float64(i)-float64(len(modes)-1)/2)
		p.Add(bars)
		p.Legend.Add(m, bars)
	}
	p.Y.Max = top * (1 + 0.07*float64(len(modes)))
	p.NominalX(r.Images...)
	return p.Save(vg.Length(max(5, 2*len(r.Images)))*vg.Inch, 4*vg.Inch, file)
}

// Render reads the raw runs a Run wrote (<date>.json) and writes the
// report and charts again into out, with this version's rendering.
func Render(file, out string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return "", fmt.Errorf("read report %s: %w", file, err)
	}
	return r.Write(out)
}

// readAheadModes are the bootfs modes whose boot reports its Reader's
// counters (the agent's mount is in the agent, whose figures are its
// /metrics).
var readAheadModes = []string{ModeCold, ModePrefetch, ModeBootfsRegistry, ModeAgent}

// bootCell returns the medians of boot's counters over the successful
// runs of img on net in mode; ok is false when no run reported them.
func (r *Report) bootCell(img, net, mode string) (BootStats, bool) {
	var v [7][]int64
	for _, s := range r.Runs {
		if s.Image != img || s.Network != net || s.Mode != mode || s.Err != "" || s.Skipped != "" || s.Boot == nil {
			continue
		}
		b := s.Boot
		for i, x := range []int64{b.BytesFetched, b.Batches, b.ReadAheadBytes, b.ReadAheadWastedBytes, b.PrefetchUnreadBytes, b.NetworkWaits, b.LongestChain} {
			v[i] = append(v[i], x)
		}
	}
	if len(v[0]) == 0 {
		return BootStats{}, false
	}
	return BootStats{BytesFetched: median(v[0]), Batches: median(v[1]), ReadAheadBytes: median(v[2]),
		ReadAheadWastedBytes: median(v[3]), PrefetchUnreadBytes: median(v[4]), NetworkWaits: median(v[5]), LongestChain: median(v[6])}, true
}

// writeReadAhead writes boot's own counters at 20 ms: requests (the
// run's, boot image included), batch reads, what was fetched and never
// read as a share of what boot fetched, the longest chain of dependent
// fetches and the reads that waited for the network.
func (r *Report) writeReadAhead(p func(string, ...any)) {
	const slow = "20ms-100mbit"
	if !slices.Contains(r.Networks, slow) {
		return
	}
	var rows []string
	for _, img := range r.Images {
		for _, m := range readAheadModes {
			if !slices.Contains(r.Modes, m) {
				continue
			}
			c := r.cell(img, slow, m)
			if len(c.ok) == 0 {
				continue
			}
			b, ok := r.bootCell(img, slow, m)
			if !ok {
				rows = append(rows, fmt.Sprintf("| %s | %s | %d | not reported | | | | |", img, m, c.requests))
				continue
			}
			rows = append(rows, fmt.Sprintf("| %s | %s | %d | %d | %s | %s (%.1f%%) | %d | %d |", img, m, c.requests, b.Batches,
				mb(b.BytesFetched), mb(b.Wasted()), pct(b.Wasted(), b.BytesFetched), b.LongestChain, b.NetworkWaits))
		}
	}
	if len(rows) == 0 {
		return
	}
	p("\n## Read-ahead and dependent fetches\n\nAt %s, medians: the run's requests (boot image included), and boot's own counters from its stats line (BOOTFS_LOG=info): its batch reads, the chunk bytes it fetched, of those the bytes never read (read-ahead waste plus prefetched chunks unread, as a share of its bytes), the longest chain of fetches each waiting on the one before, and the reads that waited for the network. bootfs-agent's boot has none (the mount is the agent's).\n\n", slow)
	p("| image | mode | requests | batches | boot fetched | never read (waste) | longest chain | network waits |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, row := range rows {
		p("%s\n", row)
	}
}
