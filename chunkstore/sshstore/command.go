package sshstore

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// errCommand is wrapped by errors about an exec request the server will
// not run. Its messages go to the client's stderr.
var errCommand = errors.New("sshstore")

// remoteCommand is a parsed `casync [OPTIONS] pull|push BASE ARCHIVE
// INDEX WSTORE [RSTORE...]` command line.
type remoteCommand struct {
	verb   string   // "pull" or "push"
	index  string   // push: the index to write, "" for none
	stores []string // WSTORE and RSTOREs that are not "-"
}

// usage is what the server runs, for error messages.
const usage = "this server only runs `casync pull - - - STORE` and `casync push - - [INDEX] STORE`"

// splitCommand splits an exec request's command string into words the way
// a POSIX shell would for the commands casync and desync send: blanks
// separate words; single quotes, double quotes and backslashes quote. The
// server runs no shell, so any unquoted character a shell would treat
// specially (; & | < > ( ) $ ` and newlines) is refused rather than taken
// literally.
func splitCommand(s string) ([]string, error) {
	var (
		words []string
		cur   strings.Builder
		in    bool // inside a word
	)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t':
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("%w: command %q: unterminated single quote at byte %d", errCommand, s, i)
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			in = true
		case c == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '$' || s[i] == '`' {
					return nil, fmt.Errorf("%w: command %q: shell expansion %q at byte %d is not supported", errCommand, s, s[i], i)
				}
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\"\\$`", s[i+1]) >= 0 {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i == len(s) {
				return nil, fmt.Errorf("%w: command %q: unterminated double quote", errCommand, s)
			}
			in = true
		case c == '\\':
			if i+1 == len(s) {
				return nil, fmt.Errorf("%w: command %q: trailing backslash", errCommand, s)
			}
			i++
			cur.WriteByte(s[i])
			in = true
		case strings.IndexByte(";&|<>()$`\n\r", c) >= 0:
			return nil, fmt.Errorf("%w: command %q: shell syntax %q at byte %d is not supported", errCommand, s, c, i)
		default:
			cur.WriteByte(c)
			in = true
		}
	}
	if in {
		words = append(words, cur.String())
	}
	return words, nil
}

// parseCommand accepts the commands casync (`casync pull - - - PATH`,
// `casync push - - INDEX PATH`, possibly with --log-level= and
// --rate-limit-bps= before the verb) and desync (`casync pull - - -
// 'PATH'`) run over ssh. The program may be any path whose base name is
// "casync" (CASYNC_REMOTE_PATH). Only chunks are served, and only chunks
// and indexes stored: a base or archive argument other than "-" is
// refused, and so is an index to pull.
func parseCommand(cmd string) (remoteCommand, error) {
	argv, err := splitCommand(cmd)
	if err != nil {
		return remoteCommand{}, err
	}
	if len(argv) == 0 {
		return remoteCommand{}, fmt.Errorf("%w: empty command; %s", errCommand, usage)
	}
	if path.Base(argv[0]) != "casync" {
		return remoteCommand{}, fmt.Errorf("%w: %q: command not found; %s", errCommand, argv[0], usage)
	}
	args := argv[1:]
	for len(args) > 0 && strings.HasPrefix(args[0], "-") && args[0] != "-" {
		name, _, _ := strings.Cut(args[0], "=")
		switch name {
		case "--log-level", "--rate-limit-bps":
			// Accepted and ignored: they tune casync's own logging and
			// pacing, which have no equivalent here.
		default:
			return remoteCommand{}, fmt.Errorf("%w: casync: option %q is not supported by this chunk server", errCommand, args[0])
		}
		args = args[1:]
	}
	if len(args) == 0 {
		return remoteCommand{}, fmt.Errorf("%w: casync: no verb; %s", errCommand, usage)
	}
	rc := remoteCommand{verb: args[0]}
	if rc.verb != "pull" && rc.verb != "push" {
		return remoteCommand{}, fmt.Errorf("%w: casync %s: not supported; %s", errCommand, rc.verb, usage)
	}
	args = args[1:]
	if len(args) < 4 {
		return remoteCommand{}, fmt.Errorf("%w: casync %s: want BASE ARCHIVE INDEX STORE..., have %d arguments", errCommand, rc.verb, len(args))
	}
	dash := func(s string) bool { return s == "-" || s == "" }
	what := map[string]string{"pull": "pulling", "push": "pushing"}[rc.verb]
	for i, name := range []string{"base", "archive"} {
		if !dash(args[i]) {
			return remoteCommand{}, fmt.Errorf("%w: casync %s: %s a %s (%q) is not supported; this server only exchanges chunks and indexes", errCommand, rc.verb, what, name, args[i])
		}
	}
	if !dash(args[2]) {
		if rc.verb == "pull" {
			return remoteCommand{}, fmt.Errorf("%w: casync pull: pulling a index (%q) is not supported; this server only serves chunks", errCommand, args[2])
		}
		rc.index = args[2]
	}
	for _, s := range args[3:] {
		if !dash(s) {
			rc.stores = append(rc.stores, s)
		}
	}
	if len(rc.stores) == 0 {
		return remoteCommand{}, fmt.Errorf("%w: casync %s: no store given", errCommand, rc.verb)
	}
	if rc.verb == "push" && dash(args[3]) {
		return remoteCommand{}, fmt.Errorf("%w: casync push: no store to write (WSTORE is %q)", errCommand, args[3])
	}
	return rc, nil
}

// shellQuote quotes s as one word for the remote command line.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+:,@%=") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
