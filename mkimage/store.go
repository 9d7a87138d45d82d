package mkimage

import (
	"context"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/sshstore"
)

func defaultJobs() int { return runtime.GOMAXPROCS(0) }

// openWriteStore opens the store that chunks are written to.
//
// Chunk IDs are computed here from the very bytes that are stored, so the
// stores skip checking them again (TrustWrites); every reader verifies.
//
// An ssh:// store logs in with the keys in BOOTFS_SSH_KEY (a
// comma-separated list) and checks the host key against
// BOOTFS_SSH_KNOWN_HOSTS, the variables boot reads too; each defaults to
// the files in ~/.ssh. The server must let the key write
// (`chunkstore serve --write-authorized-keys`).
//
// A local store is written without an fsync per chunk; instead
// syncStore flushes the whole file system once, after the last chunk and
// before the index that refers to the chunks is written. A crash before
// that leaves no index that names an unsynced chunk.
func openWriteStore(ctx context.Context, spec string, opts Options) (chunkstore.WriteStore, error) {
	if err := checkRegistryList(spec); err != nil {
		return nil, err
	}
	s, err := chunkstore.Open(ctx, spec, chunkstore.Options{
		Digest: opts.Digest,
		Local:  chunkstore.LocalOptions{Create: true, NoSync: true, TrustWrites: true},
		HTTP:   chunkstore.HTTPOptions{TrustWrites: true, Token: opts.StoreToken, CAFile: opts.StoreCAFile},
		Dialers: map[string]chunkstore.Dialer{
			"ssh": sshClientOptions(os.Getenv).Dialer(),
			"oci": opts.registryOptions(true).Dialer(),
		},
		Logger: opts.Log,
	})
	if err != nil {
		return nil, err
	}
	ws, ok := s.(chunkstore.WriteStore)
	if !ok {
		s.Close()
		return nil, fmt.Errorf("store %s cannot be written to", spec)
	}
	return ws, nil
}

// sshClientOptions returns the options of ssh:// stores: keys and
// known_hosts from the environment, and trusted writes, since mkimage
// computes every chunk ID from the bytes it stores (the server still
// verifies each chunk).
func sshClientOptions(getenv func(string) string) sshstore.ClientOptions {
	return sshstore.ClientOptions{
		IdentityFiles:  sshstore.ParseKeyList(getenv(sshstore.EnvKeys)),
		KnownHostsFile: getenv(sshstore.EnvKnownHosts),
		TrustWrites:    true,
	}
}

// syncStore makes the chunks written to a local store durable.
func syncStore(s chunkstore.WriteStore) error {
	l, ok := s.(*chunkstore.Local)
	if !ok {
		return nil
	}
	f, err := os.Open(l.Dir())
	if err != nil {
		return fmt.Errorf("sync store %s: %w", l.Dir(), err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("sync store %s: %w", l.Dir(), err)
	}
	return nil
}
