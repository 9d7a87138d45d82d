package chunkstore_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/storetest"
)

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns
// their file names.
func selfSigned(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "chunkstore test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return certFile, keyFile
}

func TestServeTLSHTTP2(t *testing.T) {
	certFile, keyFile := selfSigned(t)
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
	// Without the CA, the certificate is refused.
	untrusting, _ := chunkstore.NewHTTP(base, chunkstore.HTTPOptions{Retries: -1})
	if _, err := untrusting.GetChunk(context.Background(), c.ID); err == nil {
		t.Error("GetChunk over https without the CA = nil error")
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
