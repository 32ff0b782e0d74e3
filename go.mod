module github.com/rotavault/rotavault

go 1.26
