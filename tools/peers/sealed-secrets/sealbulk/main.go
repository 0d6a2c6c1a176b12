// Command sealbulk seals many Secrets for the peers benchmark
// (examples/peers_bench.rs) with Sealed Secrets' own code, offline, the way
// `kubeseal --cert` would, one process instead of one per Secret.
//
//	sealbulk -key-namespace kube-system < secrets.jsonl > out.jsonl
//
// Input: one v1 Secret (JSON) per line. Output: first the sealing key as
// the controller stores it (a kubernetes.io/tls Secret labelled
// sealedsecrets.bitnami.com/sealed-secrets-key=active in -key-namespace, so
// the controller starts with it instead of generating one), then one
// SealedSecret (strict scope) per input line.
package main

import (
	"bufio"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"os"
	"time"

	ssv1alpha1 "github.com/bitnami/sealed-secrets/pkg/apis/sealedsecrets/v1alpha1"
	"github.com/bitnami/sealed-secrets/pkg/crypto"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/util/keyutil"
)

func main() {
	keyNs := flag.String("key-namespace", "kube-system", "namespace of the controller (where it looks for its keys)")
	keySize := flag.Int("key-size", 4096, "RSA key size (the controller's default)")
	flag.Parse()

	key, cert, err := crypto.GeneratePrivateKeyAndCert(*keySize, 10*365*24*time.Hour, "")
	check(err)
	out := bufio.NewWriterSize(os.Stdout, 1<<20)
	enc := json.NewEncoder(out)
	keySecret := v1.Secret{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{
			Namespace: *keyNs,
			Name:      "sealed-secrets-keybench",
			Labels:    map[string]string{"sealedsecrets.bitnami.com/sealed-secrets-key": "active"},
		},
		Type: v1.SecretTypeTLS,
		Data: map[string][]byte{
			v1.TLSPrivateKeyKey: pem.EncodeToMemory(&pem.Block{Type: keyutil.RSAPrivateKeyBlockType, Bytes: x509.MarshalPKCS1PrivateKey(key)}),
			v1.TLSCertKey:       pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
		},
	}
	check(enc.Encode(&keySecret))

	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 16<<20)
	for in.Scan() {
		var s v1.Secret
		check(json.Unmarshal(in.Bytes(), &s))
		sealed, err := ssv1alpha1.NewSealedSecret(scheme.Codecs, &key.PublicKey, &s)
		check(err)
		sealed.TypeMeta = metav1.TypeMeta{APIVersion: "bitnami.com/v1alpha1", Kind: "SealedSecret"}
		check(enc.Encode(sealed))
	}
	check(in.Err())
	check(out.Flush())
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "sealbulk:", err)
		os.Exit(1)
	}
}
