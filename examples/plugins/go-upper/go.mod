module hotload.dev/examples/go-upper

go 1.24
