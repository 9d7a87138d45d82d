package chunkstore_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/storetest"
	"github.com/bootfs/bootfs/internal/testenv"
)

func TestServeTLSHTTP2(t *testing.T) {
	certFile, keyFile, _ := testenv.WriteSelfSignedCert(t, t.TempDir())
	l := newLocal(t)
	c := storetest.Chunks(80, 1)[0]
	l.StoreChunk(context.Background(), c.ID, c.Data)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- chunkstore.Serve(ctx, ln, l, chunkstore.ServerOptions{TLSCert: certFile, TLSKey: keyFile})
	}()
	base := "https://" + ln.Addr().String()

	client, err := chunkstore.NewHTTP(base, chunkstore.HTTPOptions{CAFile: certFile})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := client.GetChunk(context.Background(), c.ID); err != nil || string(got) != string(c.Data) {
		t.Errorf("GetChunk over https = %v", err)
	}
	// Without the CA, the certificate is refused at once, not retried,
	// and the error says how to trust it.
	untrusting := retrying(t, base, chunkstore.RetryOptions{Retries: 3})
	if _, err := untrusting.GetChunk(context.Background(), c.ID); err == nil || chunkstore.Attempts(err) != 1 || !strings.Contains(err.Error(), "--ca-file") {
		t.Errorf("GetChunk over https without the CA = %v, want one attempt, naming --ca-file", err)
	}
	if s := untrusting.Stats(); s.Retries != 0 {
		t.Errorf("an untrusted certificate was retried %d times, want 0", s.Retries)
	}
	// The server speaks HTTP/2.
	pemBytes, _ := os.ReadFile(certFile)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	resp, err := hc.Get(base + "/" + chunkstore.ChunkPath(c.ID))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 {
		t.Errorf("GET over TLS = %s %d, want HTTP/2 200", resp.Proto, resp.StatusCode)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve after cancel = %v", err)
	}
}
