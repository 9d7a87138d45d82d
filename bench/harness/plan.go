package harness

import (
	"slices"
	"time"
)

// A plan is what a run will measure and about how long it takes, printed
// at its start so that a selection too big for its time shows at once.
type plan struct {
	runs int           // workload runs of the sampling
	eta  time.Duration // the whole run, trees and conversions cached
}

// The estimate's figures come from the runs on this project's 2-core
// machine (2026-11-24 and 2026-12-05): the time to ready of a python-
// sized image per mode and network, scaled per image, plus each run's
// cold-state overhead, per image its preparation, and each extra.
var (
	// planReady is the time to ready of python per network and mode.
	planReady = map[string]map[string]float64{
		"loopback": {ModeRegistry: 2, ModeEstargz: 1.4, ModeEstargzOpt: 1, ModeCold: 0.8, ModeBootfsRegistry: 0.8, ModeAgent: 0.8,
			ModePrefetch: 0.7, ModeWarm: 0.4, ModeCasync: 2.3, ModeSaveLoad: 1},
		"2ms-1gbit": {ModeRegistry: 2.5, ModeEstargz: 1.8, ModeEstargzOpt: 1.3, ModeCold: 1, ModeBootfsRegistry: 1, ModeAgent: 1,
			ModePrefetch: 0.8, ModeWarm: 0.4, ModeCasync: 5.8, ModeSaveLoad: 1.7},
		"20ms-100mbit": {ModeRegistry: 10, ModeEstargz: 4, ModeEstargzOpt: 3, ModeCold: 3.4, ModeBootfsRegistry: 3.5, ModeAgent: 3.5,
			ModePrefetch: 2, ModeWarm: 0.5, ModeCasync: 32, ModeSaveLoad: 14},
		"100ms-100mbit": {ModeRegistry: 14, ModeEstargz: 8, ModeEstargzOpt: 6, ModeCold: 5, ModeBootfsRegistry: 5, ModeAgent: 5,
			ModePrefetch: 4, ModeWarm: 0.5, ModeCasync: 90, ModeSaveLoad: 20},
	}
	// planScale is an image's time to ready against python's.
	planScale = map[string]float64{"busybox": 0.3, "debian-min": 0.6, "python": 1, "gcc": 2.2, "postgres": 2.6}
	// planOverhead is a run's cold state (container and image removed,
	// page cache dropped); the eStargz modes also restart and wipe their
	// daemons.
	planOverhead        = 1.5
	planEstargzOverhead = 3.0
	// planPrepare is an image's setup (import, push, the cached eStargz
	// conversions' import and push, mkimage, its push, casync make and
	// the prefetch recording), fixed plus per python-sized image.
	planPrepare, planPrepareScaled = 20.0, 15.0
	// planExtras are the extras' times with postgres among the images;
	// they scale with the largest image.
	planExtras = map[string]float64{"convert": 150, "dedup": 90, "chunkers": 150, "fuse": 150, "pgversion": 20, "node": 200}
)

// plan counts the runs sample will make (as it does: casync mount only
// in its first CasyncSamples samples, only the cells each network runs)
// and estimates the run's duration.
func (o *Options) plan() plan {
	var p plan
	secs, largest := 0.0, 0.0
	for _, img := range o.Images {
		secs += planPrepare + planPrepareScaled*planScale[img]
		largest = max(largest, planScale[img])
		for _, name := range o.Networks {
			n, _ := network(name)
			for _, m := range o.Modes {
				if !n.Runs(img, m) {
					continue
				}
				samples := o.Samples
				if m == ModeCasync {
					samples = min(o.CasyncSamples, o.Samples)
				}
				each := planReady[name][m]*planScale[img] + planOverhead
				if m == ModeEstargz || m == ModeEstargzOpt {
					each += planEstargzOverhead
				}
				p.runs += samples
				secs += float64(samples) * each
			}
		}
	}
	for _, x := range o.Extras {
		secs += planExtras[x] * largest / planScale["postgres"]
	}
	p.eta = time.Duration(secs * float64(time.Second)).Round(time.Minute)
	if slices.Contains(o.Modes, ModeEstargz) || slices.Contains(o.Modes, ModeEstargzOpt) {
		p.eta += 10 * time.Second // building the snapshotter
	}
	return p
}
