package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"
)

// SocketName is the agent's socket in its socket directory; a converted
// container mounts that directory at DefaultSocketDir.
const (
	SocketName       = "agent.sock"
	DefaultSocketDir = "/run/bootfs"
)

// ProtocolVersion is the version of Request and Reply. The agent refuses
// any other.
const ProtocolVersion = 1

// maxMessage bounds a message on the socket (SOCK_SEQPACKET: one message a
// packet, so no framing of its own).
const maxMessage = 64 << 10

// Request is what boot sends the agent: "make my image the root of my
// mount namespace". Everything else the agent needs it takes from the
// kernel (who the caller is) and from the caller's own root (the image's
// config, index and TOC), never from the request.
type Request struct {
	Version int `json:"version"`
	// Upper is a directory of the container's (its path in the
	// container, such as a volume) for the overlay's writable layer;
	// empty means a tmpfs (BOOTFS_UPPER).
	Upper string `json:"upper,omitempty"`
	// Stats and Record are files of the container's (paths in its new
	// root, on a volume) for the agent to write the mount's figures
	// (lazyfs.Stats, as JSON) and the list of image files read to as
	// the mount ends (BOOTFS_STATS, BOOTFS_RECORD). Empty means none.
	Stats  string `json:"stats,omitempty"`
	Record string `json:"record,omitempty"`
	// Started is when boot started, in Unix milliseconds, for the
	// stats' start_to_exec_ms.
	Started int64 `json:"started,omitempty"`
}

// Reply is the agent's answer: an empty Error means the caller's root is
// the image now.
type Reply struct {
	Error string `json:"error,omitempty"`
	// Reports says the agent writes the Stats and Record files asked
	// for as the mount ends (an agent older than that leaves it false);
	// Warnings say why it cannot write one.
	Reports  bool     `json:"reports,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
}

// ErrRefused wraps the error the agent replied with, and ErrNoAgent the
// error of a socket no agent listens on.
var (
	ErrRefused = errors.New("bootfs-agent")
	ErrNoAgent = errors.New("no bootfs agent answers")
)

// SocketPath returns the agent's socket in dir ("" is DefaultSocketDir).
func SocketPath(dir string) string {
	if dir == "" {
		dir = DefaultSocketDir
	}
	return filepath.Join(dir, SocketName)
}

// MountRoot asks the agent at socket to make the caller's image its root
// (the client side, run by boot as a container's PID 1). It returns the
// agent's reply when the agent has pivoted the caller's mount namespace,
// or an error wrapping ErrRefused if the agent could not, or another if
// it could not be reached (wrapping ErrNoAgent if nothing listens).
// timeout bounds the whole exchange.
func MountRoot(socket string, req Request, timeout time.Duration) (Reply, error) {
	req.Version = ProtocolVersion
	c, err := net.DialTimeout("unixpacket", socket, timeout)
	if err != nil {
		return Reply{}, fmt.Errorf("%w at %s: %w", ErrNoAgent, socket, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	b, err := json.Marshal(req)
	if err != nil {
		return Reply{}, err
	}
	if _, err := c.Write(b); err != nil {
		return Reply{}, fmt.Errorf("send to the bootfs agent at %s: %w", socket, err)
	}
	buf := make([]byte, maxMessage)
	n, err := c.Read(buf)
	if err != nil {
		return Reply{}, fmt.Errorf("no answer from the bootfs agent at %s: %w", socket, err)
	}
	var rep Reply
	if err := json.Unmarshal(buf[:n], &rep); err != nil {
		return Reply{}, fmt.Errorf("bad answer from the bootfs agent at %s: %w", socket, err)
	}
	if rep.Error != "" {
		return rep, fmt.Errorf("%w: %s", ErrRefused, rep.Error)
	}
	return rep, nil
}
