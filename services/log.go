package services

import (
	"io"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/term"
)

// LogConfig chooses the log level and format.
type LogConfig struct {
	Level  string `json:"level,omitempty"`  // trace, debug, info (default), warn, error
	Format string `json:"format,omitempty"` // json (default off a terminal) or console
}

// NewLogger builds the process logger writing to w: JSON by default, console
// lines when w is a terminal or Format is "console".
func NewLogger(c LogConfig, w io.Writer) (zerolog.Logger, error) {
	lvl := zerolog.InfoLevel
	if c.Level != "" {
		var err error
		if lvl, err = zerolog.ParseLevel(strings.ToLower(c.Level)); err != nil {
			return zerolog.Nop(), err
		}
	}
	out := w
	format := c.Format
	if format == "" {
		format = "json"
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			format = "console"
		}
	}
	if format == "console" {
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(out).Level(lvl).With().Timestamp().Logger(), nil
}
