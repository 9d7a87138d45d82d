package sshstore

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/bootfs/bootfs/casync"
)

func le64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

// raw builds a message from a size, a type and body parts, so tests can
// write sizes that do not match the body.
func raw(size, typ uint64, body ...[]byte) []byte {
	b := append(le64(size), le64(typ)...)
	for _, p := range body {
		b = append(b, p...)
	}
	return b
}

func idOf(b byte) casync.ChunkID {
	var id casync.ChunkID
	for i := range id {
		id[i] = b + byte(i)
	}
	return id
}

// TestMessageLayout pins the byte layout of each message to casync's
// structs in src/caprotocol.h.
func TestMessageLayout(t *testing.T) {
	id := idOf(1)
	tests := []struct {
		name string
		got  []byte
		want string // hex
	}{
		{"hello", appendHello(nil, featPullChunks),
			"1800000000000000" + "eefba58c94d0713c" + "4000000000000000"},
		{"request", appendRequest(nil, requestHighPriority, []casync.ChunkID{id}),
			"3800000000000000" + "10929df8e027b48a" + "0100000000000000" + hex.EncodeToString(id[:])},
		{"chunk", appendChunkHeader(nil, chunkCompressed, id, 3),
			"3b00000000000000" + "8cbc840a18dd1352" + "0100000000000000" + hex.EncodeToString(id[:])},
		{"missing", appendMissing(nil, id),
			"3000000000000000" + "6c7b2bc8faf910d0" + hex.EncodeToString(id[:])},
		{"index", appendIndex(nil, []byte{0xaa}),
			"1100000000000000" + "f8273e2bdd912ab3" + "aa"},
		{"index eof", appendIndexEOF(nil),
			"1000000000000000" + "f5183704f132094f"},
		{"goodbye", appendGoodbye(nil),
			"1000000000000000" + "c386361abf5d20ad"},
		{"abort", appendAbort(nil, 5, "no\n"),
			"1c00000000000000" + "52a3fe7e6b13d9e7" + "0500000000000000" + "6e6f3f00"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := hex.EncodeToString(tt.got); got != tt.want {
				t.Errorf("encoding = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestReadMessage(t *testing.T) {
	id, id2 := idOf(1), idOf(100)
	big := bytes.Repeat([]byte("0123456789abcdef"), (3*growStep+100)/16)
	tests := []struct {
		name    string
		in      []byte
		want    message
		wantErr error // nil: success
	}{
		{name: "hello", in: appendHello(nil, featReadableStore), want: message{typ: msgHello, flags: featReadableStore}},
		{name: "request two", in: appendRequest(nil, 0, []casync.ChunkID{id, id2}), want: message{typ: msgRequest, ids: []casync.ChunkID{id, id2}}},
		{name: "chunk", in: append(appendChunkHeader(nil, chunkCompressed, id, 3), "abc"...), want: message{typ: msgChunk, flags: chunkCompressed, id: id, data: []byte("abc")}},
		{name: "chunk uncompressed", in: append(appendChunkHeader(nil, 0, id, 1), 'x'), want: message{typ: msgChunk, id: id, data: []byte("x")}},
		{name: "missing", in: appendMissing(nil, id), want: message{typ: msgMissing, id: id}},
		{name: "goodbye", in: appendGoodbye(nil), want: message{typ: msgGoodbye}},
		{name: "abort", in: appendAbort(nil, 74, "bad message"), want: message{typ: msgAbort, errno: 74, reason: "bad message"}},
		{name: "abort empty reason", in: appendAbort(nil, 0, ""), want: message{typ: msgAbort}},
		{name: "chunk larger than read step", in: append(appendChunkHeader(nil, 0, id, len(big)), big...), want: message{typ: msgChunk, id: id, data: big}},

		{name: "empty", in: nil, wantErr: io.EOF},
		{name: "short header", in: le64(16), wantErr: ErrProtocol},
		{name: "size below header", in: raw(15, msgGoodbye), wantErr: ErrProtocol},
		{name: "size above max", in: raw(maxMessage+1, msgChunk), wantErr: ErrProtocol},
		{name: "unknown type", in: raw(16, 42), wantErr: ErrProtocol},
		{name: "hello short", in: raw(16, msgHello), wantErr: ErrProtocol},
		{name: "hello long", in: raw(32, msgHello, le64(1), le64(0)), wantErr: ErrProtocol},
		{name: "hello no flags", in: appendHello(nil, 0), wantErr: ErrProtocol},
		{name: "hello unknown flag", in: appendHello(nil, featMax+1), wantErr: ErrProtocol},
		{name: "hello all ones", in: appendHello(nil, ^uint64(0)), wantErr: ErrProtocol},
		{name: "request no ids", in: raw(24, msgRequest, le64(0)), wantErr: ErrProtocol},
		{name: "request partial id", in: raw(24+33, msgRequest, le64(0), make([]byte, 33)), wantErr: ErrProtocol},
		{name: "request unknown flag", in: appendRequest(nil, 2, []casync.ChunkID{id}), wantErr: ErrProtocol},
		{name: "chunk no data", in: appendChunkHeader(nil, 0, id, 0), wantErr: ErrProtocol},
		{name: "chunk unknown flag", in: append(appendChunkHeader(nil, 2, id, 1), 'x'), wantErr: ErrProtocol},
		{name: "missing long", in: raw(49, msgMissing, id[:], []byte{0}), wantErr: ErrProtocol},
		{name: "goodbye long", in: raw(17, msgGoodbye, []byte{0}), wantErr: ErrProtocol},
		{name: "abort no reason", in: raw(24, msgAbort, le64(0)), wantErr: ErrProtocol},
		{name: "abort not terminated", in: raw(26, msgAbort, le64(0), []byte("ab")), wantErr: ErrProtocol},
		{name: "abort control byte", in: raw(28, msgAbort, le64(0), []byte("a\nb"), []byte{0}), wantErr: ErrProtocol},
		{name: "abort huge errno", in: raw(25, msgAbort, le64(1<<31), []byte{0}), wantErr: ErrProtocol},
		{name: "index", in: appendIndex(nil, []byte("caidx bytes")), want: message{typ: msgIndex, data: []byte("caidx bytes")}},
		{name: "index eof", in: appendIndexEOF(nil), want: message{typ: msgIndexEOF}},
		{name: "index empty", in: raw(16, msgIndex), wantErr: ErrProtocol},
		{name: "index eof long", in: raw(17, msgIndexEOF, []byte{0}), wantErr: ErrProtocol},
		{name: "archive unsupported", in: raw(17, msgArchive, []byte{1}), wantErr: ErrProtocol},
		{name: "archive eof unsupported", in: raw(16, msgArchiveEOF), wantErr: ErrProtocol},
		{name: "truncated body", in: appendMissing(nil, id)[:40], wantErr: ErrProtocol},
		{name: "truncated big body", in: raw(maxMessage, msgChunk, le64(0), id[:], make([]byte, 100)), wantErr: ErrProtocol},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readMessage(bytes.NewReader(tt.in))
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("readMessage(%x) = %+v, %v, want error %v", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("readMessage(%x) = %v", tt.in, err)
			}
			if r := bytes.NewReader(append(tt.in, appendGoodbye(nil)...)); true {
				// A message must be read exactly: the next one follows.
				readMessage(r)
				if next, err := readMessage(r); err != nil || next.typ != msgGoodbye {
					t.Errorf("readMessage after %s = %+v, %v, want GOODBYE", tt.name, next, err)
				}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("readMessage(%x) = %+v, want %+v", tt.in, got, tt.want)
			}
			if re := appendMessage(nil, got); !bytes.Equal(re, tt.in) {
				t.Errorf("appendMessage(%+v) = %x, want %x", got, re, tt.in)
			}
		})
	}
}

// TestReadCasyncTranscript reads what the real `casync pull` answered to a
// HELLO and REQUEST (testdata/README.md says how it was made).
func TestReadCasyncTranscript(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "casync-pull.out"))
	if err != nil {
		t.Fatal(err)
	}
	r := bytes.NewReader(b)
	var got []string
	for {
		m, err := readMessage(r)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("readMessage after %v: %v", got, err)
		}
		got = append(got, typeName(m.typ))
		switch m.typ {
		case msgHello:
			if m.flags != featReadableStore {
				t.Errorf("casync HELLO flags = %#x, want %#x", m.flags, featReadableStore)
			}
		case msgChunk:
			if m.flags != chunkCompressed {
				t.Errorf("casync CHUNK flags = %#x, want %#x (compressed)", m.flags, chunkCompressed)
			}
			if _, err := casync.DecodeChunk(casync.SHA512_256, m.id, m.data); err != nil {
				t.Errorf("casync CHUNK %s: %v", m.id, err)
			}
		}
	}
	if want := "HELLO CHUNK MISSING"; strings.Join(got, " ") != want {
		t.Errorf("casync transcript = %v, want %s", got, want)
	}
}

// FuzzReadMessage checks that readMessage never panics or over-reads and
// that whatever it accepts encodes back to the same bytes.
func FuzzReadMessage(f *testing.F) {
	id := idOf(7)
	f.Add(appendHello(nil, featPullChunks))
	f.Add(appendRequest(nil, requestHighPriority, []casync.ChunkID{id, idOf(9)}))
	f.Add(append(appendChunkHeader(nil, chunkCompressed, id, 4), "zstd"...))
	f.Add(appendMissing(nil, id))
	f.Add(appendGoodbye(nil))
	f.Add(appendAbort(nil, 5, "reason"))
	f.Add(append(appendHello(nil, featReadableStore), appendMissing(nil, id)...))
	big := bytes.Repeat([]byte{0xa5}, 3*growStep+12345)
	f.Add(append(append(appendChunkHeader(nil, 0, id, len(big)), big...), appendGoodbye(nil)...))
	if b, err := os.ReadFile(filepath.Join("testdata", "casync-pull.out")); err == nil {
		f.Add(b)
	}
	f.Add(append(appendIndex(nil, []byte("caidx")), appendIndexEOF(nil)...))
	for _, name := range []string{"casync-pull.in", "casync-push.in", "casync-push.out"} {
		if b, err := os.ReadFile(filepath.Join("testdata", name)); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		for {
			start := len(in) - r.Len()
			m, err := readMessage(r)
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrProtocol) {
					t.Fatalf("readMessage: error %v does not wrap ErrProtocol", err)
				}
				return
			}
			end := len(in) - r.Len()
			if re := appendMessage(nil, m); !bytes.Equal(re, in[start:end]) {
				t.Fatalf("appendMessage(readMessage(%x)) = %x", in[start:end], re)
			}
		}
	})
}
