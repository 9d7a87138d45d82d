package sshstore

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

var (
	// ErrHostKey is wrapped by errors for a server whose host key is
	// unknown, changed or revoked in the known_hosts file.
	ErrHostKey = errors.New("sshstore: host key refused")
	// ErrAuth is wrapped by errors for a server that refused every
	// identity the client offered, or a client with no usable identity.
	ErrAuth = errors.New("sshstore: authentication failed")
)

// defaultIdentities are tried, if they exist, when ClientOptions names no
// identity file; OpenSSH tries the same files in a similar order.
var defaultIdentities = []string{"id_ed25519", "id_ecdsa", "id_rsa"}

// loadIdentities returns a signer per file. With no files it uses the
// default identities in ~/.ssh that exist.
func loadIdentities(files []string) ([]ssh.Signer, []string, error) {
	if len(files) == 0 {
		home, err := os.UserHomeDir()
		if err != nil {
			return nil, nil, fmt.Errorf("%w: no identity file given and no home directory: %v", ErrAuth, err)
		}
		for _, name := range defaultIdentities {
			f := filepath.Join(home, ".ssh", name)
			if _, err := os.Stat(f); err == nil {
				files = append(files, f)
			}
		}
		if len(files) == 0 {
			return nil, nil, fmt.Errorf("%w: no identity file given and none of %v exists in %s", ErrAuth, defaultIdentities, filepath.Join(home, ".ssh"))
		}
	}
	signers := make([]ssh.Signer, 0, len(files))
	for _, f := range files {
		signer, err := loadSigner(f)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: identity %v", ErrAuth, err)
		}
		signers = append(signers, signer)
	}
	return signers, files, nil
}

// defaultKnownHosts is ~/.ssh/known_hosts.
func defaultKnownHosts() (string, error) {
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("%w: no known_hosts file given and no home directory: %v", ErrHostKey, err)
	}
	return filepath.Join(home, ".ssh", "known_hosts"), nil
}

// hostKeyCheck returns a callback that accepts only the keys file lists for
// the host, with errors that name the host, the offered key's fingerprint
// and the file, and the host key algorithms file knows for addr (so the
// server is asked for a key type that can be checked).
func hostKeyCheck(file, addr string) (ssh.HostKeyCallback, []string, error) {
	cb, err := knownhosts.New(file)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: cannot verify %s without its known_hosts file: %v", ErrHostKey, addr, err)
	}
	check := func(host string, remote net.Addr, key ssh.PublicKey) error {
		err := cb(host, remote, key)
		if err == nil {
			return nil
		}
		fp := ssh.FingerprintSHA256(key)
		var ke *knownhosts.KeyError
		var re *knownhosts.RevokedError
		switch {
		case errors.As(err, &re):
			return fmt.Errorf("%w: %s offers %s key %s, which %s:%d marks as revoked", ErrHostKey, host, key.Type(), fp, re.Revoked.Filename, re.Revoked.Line)
		case errors.As(err, &ke) && len(ke.Want) == 0:
			return fmt.Errorf("%w: %s is not a known host: it offers %s key %s, which is not in %s (if you trust it, add the key to that file)", ErrHostKey, host, key.Type(), fp, file)
		case errors.As(err, &ke):
			w := ke.Want[0]
			return fmt.Errorf("%w: HOST KEY CHANGED for %s: it offers %s key %s, but %s:%d has %s key %s; someone may be intercepting the connection (if the host was reinstalled, fix that line)", ErrHostKey, host, key.Type(), fp, w.Filename, w.Line, w.Key.Type(), ssh.FingerprintSHA256(w.Key))
		}
		return fmt.Errorf("%w: %s: %v (checked %s)", ErrHostKey, host, err, file)
	}
	return check, knownAlgorithms(cb, addr), nil
}

// knownAlgorithms returns the host key algorithms of the keys cb knows for
// addr, by offering a key no file can hold and reading what it wanted.
func knownAlgorithms(cb ssh.HostKeyCallback, addr string) []string {
	tcp, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		tcp = &net.TCPAddr{}
	}
	err = cb(addr, tcp, probeKey{})
	var ke *knownhosts.KeyError
	if !errors.As(err, &ke) {
		return nil
	}
	var algos []string
	for _, k := range ke.Want {
		switch t := k.Key.Type(); t {
		case ssh.KeyAlgoRSA:
			algos = append(algos, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA)
		default:
			algos = append(algos, t)
		}
	}
	slices.Sort(algos)
	return slices.Compact(algos)
}

// probeKey is a public key of a type no known_hosts line has.
type probeKey struct{}

func (probeKey) Type() string                        { return "bootfs-probe" }
func (probeKey) Marshal() []byte                     { return []byte("bootfs-probe") }
func (probeKey) Verify([]byte, *ssh.Signature) error { return errors.New("probe key") }

// The environment variables that name an ssh:// store's client keys (a
// comma-separated list, see ParseKeyList) and its known_hosts file, for
// boot and mkimage alike.
const (
	EnvKeys       = "BOOTFS_SSH_KEY"
	EnvKnownHosts = "BOOTFS_SSH_KNOWN_HOSTS"
)

// ParseKeyList splits a comma-separated list of key files, as EnvKeys
// holds it, dropping blanks.
func ParseKeyList(s string) []string {
	var keys []string
	for k := range strings.SplitSeq(s, ",") {
		if k = strings.TrimSpace(k); k != "" {
			keys = append(keys, k)
		}
	}
	return keys
}
