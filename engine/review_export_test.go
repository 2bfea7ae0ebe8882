package engine

// ViaPodConcerns is viaPodConcerns, for review_awaitpod_test.go.
var ViaPodConcerns = viaPodConcerns
