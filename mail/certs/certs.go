// Package certs provides the TLS configuration of the mail and web
// listeners: a certificate pair read from files and reloaded when they
// change (renewals need no restart), or a self-signed one for --dev.
package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// checkEvery bounds how often the files are looked at for a change.
const checkEvery = 5 * time.Second

// Loader serves a certificate pair from files, reloading it when either
// file's modification time changes. A broken new pair is logged and the
// previous one kept.
type Loader struct {
	certFile, keyFile string
	log               *slog.Logger

	mu      sync.Mutex
	cert    *tls.Certificate
	mtimes  [2]time.Time
	checked time.Time
}

// NewLoader loads the pair once; an error here is the operator's to fix.
func NewLoader(certFile, keyFile string, log *slog.Logger) (*Loader, error) {
	l := &Loader{certFile: certFile, keyFile: keyFile, log: log}
	if err := l.load(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *Loader) load() error {
	cert, err := tls.LoadX509KeyPair(l.certFile, l.keyFile)
	if err != nil {
		return fmt.Errorf("TLS certificate %s: %w", l.certFile, err)
	}
	l.cert = &cert
	l.mtimes = [2]time.Time{mtime(l.certFile), mtime(l.keyFile)}
	l.checked = time.Now()
	return nil
}

func mtime(path string) time.Time {
	fi, err := os.Stat(path)
	if err != nil {
		return time.Time{}
	}
	return fi.ModTime()
}

// GetCertificate is for tls.Config.
func (l *Loader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if time.Since(l.checked) >= checkEvery {
		l.checked = time.Now()
		if m := [2]time.Time{mtime(l.certFile), mtime(l.keyFile)}; m != l.mtimes {
			old := l.cert
			if err := l.load(); err != nil {
				l.cert = old
				l.mtimes = m // don't retry a broken pair on every handshake
				l.log.Error("new TLS certificate not loaded; keeping the previous one", "err", err)
			} else {
				l.log.Info("reloaded TLS certificate", "file", l.certFile)
			}
		}
	}
	return l.cert, nil
}

// Config returns a server TLS configuration using the loader: TLS 1.2 at
// least, Go's default (modern) cipher suites.
func (l *Loader) Config() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: l.GetCertificate}
}

// SelfSigned makes (once) and loads a self-signed certificate for hosts in
// dir: server.pem and server-key.pem. For --dev and tests only.
func SelfSigned(dir string, hosts []string, log *slog.Logger) (*Loader, error) {
	certFile, keyFile := filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	if _, err := os.Stat(certFile); err != nil {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
		tmpl := &x509.Certificate{
			SerialNumber: serial,
			Subject:      pkix.Name{CommonName: hosts[0], Organization: []string{"Flotilla (self-signed)"}},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().AddDate(2, 0, 0),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}
		for _, h := range hosts {
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			return nil, err
		}
		kb, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
			return nil, err
		}
		if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
			return nil, err
		}
	}
	return NewLoader(certFile, keyFile, log)
}
