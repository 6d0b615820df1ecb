package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// writePair writes a self-signed certificate for cn and its key.
func writePair(t *testing.T, certFile, keyFile, cn string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		DNSNames: []string{cn}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// touch moves a file's modification time forward, as a renewal does (the
// loader looks at mtimes, and a rewrite within one clock tick may not move
// them).
func touch(t *testing.T, files ...string) {
	t.Helper()
	for i, f := range files {
		at := time.Now().Add(time.Duration(i+1) * time.Minute)
		if err := os.Chtimes(f, at, at); err != nil {
			t.Fatal(err)
		}
	}
}

// served dials a TLS listener and returns the name on the certificate the
// server presented.
func served(t *testing.T, addr string, cfg *tls.Config) (string, error) {
	t.Helper()
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Subject.CommonName, nil
}

func TestLoaderReloadsWithoutRestart(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writePair(t, certFile, keyFile, "first.test")
	l, err := NewLoader(certFile, keyFile, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	cfg := l.Config()
	if cfg.MinVersion != tls.VersionTLS12 {
		t.Errorf("MinVersion %x", cfg.MinVersion)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				_ = c.(*tls.Conn).Handshake()
				c.Close()
			}()
		}
	}()
	client := &tls.Config{InsecureSkipVerify: true}
	if cn, err := served(t, ln.Addr().String(), client); err != nil || cn != "first.test" {
		t.Fatalf("first: %q %v", cn, err)
	}

	// A renewal: new files, picked up by the running listener once the
	// check interval has passed (forced here instead of waited for).
	writePair(t, certFile, keyFile, "second.test")
	touch(t, certFile, keyFile)
	if cn, _ := served(t, ln.Addr().String(), client); cn != "first.test" {
		t.Errorf("reloaded before the check interval: %q", cn)
	}
	l.mu.Lock()
	l.checked = time.Time{}
	l.mu.Unlock()
	if cn, err := served(t, ln.Addr().String(), client); err != nil || cn != "second.test" {
		t.Fatalf("after renewal: %q %v", cn, err)
	}

	// A broken pair is logged and the previous one kept.
	if err := os.WriteFile(keyFile, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	touch(t, keyFile)
	l.mu.Lock()
	l.checked = time.Time{}
	l.mu.Unlock()
	if cn, err := served(t, ln.Addr().String(), client); err != nil || cn != "second.test" {
		t.Fatalf("after a broken renewal: %q %v", cn, err)
	}

	// TLS 1.2 is the minimum.
	old := &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS11}
	if _, err := served(t, ln.Addr().String(), old); err == nil {
		t.Error("a TLS 1.1 client was served")
	}
}

func TestNewLoaderRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	if _, err := NewLoader(filepath.Join(dir, "nope.pem"), filepath.Join(dir, "nope-key.pem"), slog.New(slog.DiscardHandler)); err == nil {
		t.Error("missing files accepted")
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writePair(t, certFile, keyFile, "a.test")
	other := filepath.Join(dir, "other-key.pem")
	writePair(t, filepath.Join(dir, "other.pem"), other, "b.test")
	if _, err := NewLoader(certFile, other, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("mismatched key accepted")
	}
}

func TestSelfSigned(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	l, err := SelfSigned(dir, []string{"mx.test", "127.0.0.1"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	c, _ := l.GetCertificate(nil)
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if leaf.Subject.CommonName != "mx.test" || len(leaf.DNSNames) != 1 || len(leaf.IPAddresses) != 1 ||
		!leaf.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) {
		t.Errorf("certificate %+v %v %v", leaf.Subject, leaf.DNSNames, leaf.IPAddresses)
	}
	if err := leaf.VerifyHostname("mx.test"); err != nil {
		t.Error(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "server-key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file: %v %v", fi, err)
	}
	// Made once: a restart reuses it.
	again, err := SelfSigned(dir, []string{"other.test"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := again.GetCertificate(nil)
	if string(c2.Certificate[0]) != string(c.Certificate[0]) {
		t.Error("a second start made a new certificate")
	}
}
