// Command etcd is the etcd server built from the same etcd release that the
// pinned Kubernetes release depends on, so apiserver and etcd always agree.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
