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

// pullCommand is a parsed `casync [OPTIONS] pull BASE ARCHIVE INDEX WSTORE
// [RSTORE...]` command line.
type pullCommand struct {
	stores []string // WSTORE and RSTOREs that are not "-"
}

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

// parsePullCommand accepts the commands casync (`casync pull - - - PATH`,
// possibly with --log-level= and --rate-limit-bps= before the verb) and
// desync (`casync pull - - - 'PATH'`) run over ssh. The program may be any
// path whose base name is "casync" (CASYNC_REMOTE_PATH). Only chunk
// requests are served: a base, archive or index argument other than "-" is
// refused.
func parsePullCommand(cmd string) (pullCommand, error) {
	argv, err := splitCommand(cmd)
	if err != nil {
		return pullCommand{}, err
	}
	if len(argv) == 0 {
		return pullCommand{}, fmt.Errorf("%w: empty command; this server only runs `casync pull - - - STORE`", errCommand)
	}
	if path.Base(argv[0]) != "casync" {
		return pullCommand{}, fmt.Errorf("%w: %q: command not found; this server only runs `casync pull - - - STORE`", errCommand, argv[0])
	}
	args := argv[1:]
	for len(args) > 0 && strings.HasPrefix(args[0], "-") && args[0] != "-" {
		name, _, _ := strings.Cut(args[0], "=")
		switch name {
		case "--log-level", "--rate-limit-bps":
			// Accepted and ignored: they tune casync's own logging and
			// pacing, which have no equivalent here.
		default:
			return pullCommand{}, fmt.Errorf("%w: casync: option %q is not supported by this chunk server", errCommand, args[0])
		}
		args = args[1:]
	}
	if len(args) == 0 {
		return pullCommand{}, fmt.Errorf("%w: casync: no verb; this server only runs `casync pull - - - STORE`", errCommand)
	}
	switch args[0] {
	case "pull":
	case "push":
		return pullCommand{}, fmt.Errorf("%w: casync push: this chunk store is read-only over ssh", errCommand)
	default:
		return pullCommand{}, fmt.Errorf("%w: casync %s: not supported; this server only runs `casync pull - - - STORE`", errCommand, args[0])
	}
	args = args[1:]
	if len(args) < 4 {
		return pullCommand{}, fmt.Errorf("%w: casync pull: want BASE ARCHIVE INDEX STORE..., have %d arguments", errCommand, len(args))
	}
	for i, what := range []string{"base", "archive", "index"} {
		if args[i] != "-" && args[i] != "" {
			return pullCommand{}, fmt.Errorf("%w: casync pull: pulling a %s (%q) is not supported; this server only serves chunks", errCommand, what, args[i])
		}
	}
	var pc pullCommand
	for _, s := range args[3:] {
		if s != "-" && s != "" {
			pc.stores = append(pc.stores, s)
		}
	}
	if len(pc.stores) == 0 {
		return pullCommand{}, fmt.Errorf("%w: casync pull: no store given", errCommand)
	}
	return pc, nil
}

// shellQuote quotes s as one word for the remote command line.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+:,@%=") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
