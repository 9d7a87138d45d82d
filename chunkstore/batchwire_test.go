package chunkstore

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	"github.com/bootfs/bootfs/casync"
)

// batchFixture is a few chunks and a well-formed reply to a request for
// them, with one missing and one failed record.
func batchFixture() (ids []casync.ChunkID, datas [][]byte, reply []byte) {
	for i := range 4 {
		data := bytes.Repeat([]byte{byte(i), 'x', byte(3 * i)}, 1000*(i+1))
		ids = append(ids, casync.SHA512_256.Sum(data))
		datas = append(datas, data)
	}
	ids = append(ids, casync.SHA512_256.Sum([]byte("missing")), casync.SHA512_256.Sum([]byte("failed")))
	for _, k := range []int{2, 0, 3, 1} { // out of order
		frame := casync.CompressChunk(nil, datas[k])
		reply = appendBatchRecord(reply, ids[k], batchFound, len(frame))
		reply = append(reply, frame...)
	}
	reply = appendBatchRecord(reply, ids[4], batchMissing, 0)
	reply = appendBatchRecord(reply, ids[5], batchFailed, 4)
	reply = append(reply, "oops"...)
	return ids, datas, appendBatchEnd(reply, 6)
}

func TestReadBatch(t *testing.T) {
	ids, datas, reply := batchFixture()
	got := make([]error, len(ids))
	n, err := readBatch(bytes.NewReader(reply), casync.SHA512_256, ids, func(k int, data, frame []byte, err error) {
		got[k] = err
		if k < 4 && (err != nil || !bytes.Equal(data, datas[k])) {
			t.Errorf("chunk %d: %v", k, err)
		}
	})
	if n != 6 || err != nil {
		t.Fatalf("readBatch = %d, %v; want 6, nil", n, err)
	}
	var bf *batchFailure
	if !errors.Is(got[4], ErrNotFound) || !errors.As(got[5], &bf) || bf.msg != "oops" {
		t.Errorf("missing and failed records gave %v and %v", got[4], got[5])
	}
	for _, tt := range []struct {
		name  string
		reply []byte
		n     int
	}{
		{"cut inside a record", reply[:batchHeaderLen+3], 0},
		{"cut before the end", reply[:len(reply)-batchHeaderLen], 6},
		{"no end", nil, 0},
		{"end miscounts", appendBatchEnd(nil, 1), 0},
		{"unknown chunk", appendBatchRecord(nil, casync.SHA512_256.Sum([]byte("?")), batchMissing, 0), 0},
		{"twice", appendBatchRecord(appendBatchRecord(nil, ids[4], batchMissing, 0), ids[4], batchMissing, 0), 1},
		{"bad status", appendBatchRecord(nil, ids[4], 7, 0), 0},
		{"huge frame", appendBatchRecord(nil, ids[0], batchFound, 1<<30), 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n, err := readBatch(bytes.NewReader(tt.reply), casync.SHA512_256, ids, func(int, []byte, []byte, error) {})
			if n != tt.n || !errors.Is(err, ErrBadBatch) {
				t.Errorf("readBatch = %d, %v; want %d, ErrBadBatch", n, err, tt.n)
			}
		})
	}
}

// FuzzReadBatch: no reply makes readBatch panic, answer a chunk twice or
// one not asked for, or pass on bytes that are not the chunk's.
func FuzzReadBatch(f *testing.F) {
	ids, _, reply := batchFixture()
	f.Add(reply)
	f.Add(reply[:len(reply)/2])
	f.Add(appendBatchEnd(nil, 0))
	f.Fuzz(func(t *testing.T, reply []byte) {
		seen := make([]bool, len(ids))
		n := 0
		readBatch(bytes.NewReader(reply), casync.SHA512_256, ids, func(k int, data, frame []byte, err error) {
			n++
			if k < 0 || k >= len(ids) || seen[k] {
				t.Fatalf("chunk %d answered twice or out of range", k)
			}
			seen[k] = true
			if err == nil {
				if casync.SHA512_256.Sum(data) != ids[k] {
					t.Fatalf("chunk %d: bytes that are not the chunk's", k)
				}
				if d, derr := casync.DecompressChunk(nil, frame); derr != nil || !bytes.Equal(d, data) {
					t.Fatalf("chunk %d: a frame that is not its data", k)
				}
			} else if data != nil || frame != nil {
				t.Fatalf("chunk %d: bytes with an error", k)
			}
		})
	})
}

// FuzzParseBatchRequest: a request body parses to at most BatchChunks
// IDs that encode back to the body, or to an ErrBadBatch.
func FuzzParseBatchRequest(f *testing.F) {
	ids, _, _ := batchFixture()
	f.Add(appendBatchRequest(nil, ids))
	f.Add([]byte{})
	f.Add(make([]byte, 33))
	f.Fuzz(func(t *testing.T, body []byte) {
		got, err := parseBatchRequest(body)
		if err != nil {
			if !errors.Is(err, ErrBadBatch) || got != nil {
				t.Fatalf("parseBatchRequest(%d bytes) = %d IDs, %v", len(body), len(got), err)
			}
			return
		}
		if len(got) == 0 || len(got) > BatchChunks || !slices.Equal(appendBatchRequest(nil, got), body) {
			t.Fatalf("parseBatchRequest(%d bytes) = %d IDs that do not encode back to it", len(body), len(got))
		}
	})
}
