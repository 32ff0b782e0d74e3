package server

import (
	"context"
	"log/slog"
	"strconv"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// DefaultLogSlowCall is the duration from which a routine read is logged at
// INFO although it succeeded: a slow call is worth a line, a fast one is
// only counted (the per-RPC metrics, the issuance summary).
const DefaultLogSlowCall = 250 * time.Millisecond

// routineReads are the calls that change nothing and that consumers and
// probes make at a high rate. Their successes are logged at DEBUG: at
// 10,000 cached GetAccessToken calls/s, a line each would write megabytes
// per second and bury the lines that matter. Every other call (each one
// changes state, streams, or is a rare operator action such as a backup or
// an audit verification) is logged at INFO.
func isRoutineRead(fullMethod string) bool {
	switch fullMethod {
	case rotavaultv1.TokenVaultService_GetAccessToken_FullMethodName,
		rotavaultv1.CredentialAdminService_GetCredential_FullMethodName,
		rotavaultv1.CredentialAdminService_ListCredentials_FullMethodName,
		rotavaultv1.CredentialAdminService_ListConsumers_FullMethodName,
		rotavaultv1.CredentialAdminService_GetServerStatus_FullMethodName,
		healthpb.Health_Check_FullMethodName:
		return true
	}
	return false
}

// callDuration is the access log's grpc.time_ms field: it prints as
// milliseconds, as the middleware's default does, and lets accessLevel read
// the duration back without parsing text.
type callDuration time.Duration

func (d callDuration) LogValue() slog.Value {
	return slog.StringValue(strconv.FormatFloat(float64(time.Duration(d))/float64(time.Millisecond), 'f', -1, 64))
}

func durationField(d time.Duration) logging.Fields {
	return logging.Fields{"grpc.time_ms", callDuration(d)}
}

// accessLevel lowers a finished call's line from INFO to DEBUG when it is a
// routine read that succeeded faster than slow. Errors, slow calls and calls
// that change state keep the middleware's level.
func accessLevel(lvl slog.Level, fields []any, slow time.Duration) slog.Level {
	if lvl != slog.LevelInfo {
		return lvl
	}
	method, code, took := callOf(fields)
	if code != "OK" || !isRoutineRead(method) || took >= slow {
		return lvl
	}
	return slog.LevelDebug
}

// callOf reads the access log's fields back: the full method, the code's
// name and the duration.
func callOf(fields []any) (fullMethod, code string, took time.Duration) {
	var service, method string
	for i := 0; i+1 < len(fields); i += 2 {
		switch fields[i] {
		case logging.ServiceFieldKey:
			service, _ = fields[i+1].(string)
		case logging.MethodFieldKey:
			method, _ = fields[i+1].(string)
		case "grpc.code":
			code, _ = fields[i+1].(string)
		case "grpc.time_ms":
			d, _ := fields[i+1].(callDuration)
			took = time.Duration(d)
		}
	}
	return "/" + service + "/" + method, code, took
}

// accessLogger is the access log's sink: refused calls were logged
// (sampled) where they were refused; routine successes go to DEBUG. Routine
// reads that fail are sampled too, one line per method and code a second
// (with the number left out) unless the level is DEBUG: consumers of a
// revoked credential, or a caller asking for ids that do not exist, fail
// as fast as they call (20,000 such calls wrote 11 MB), and the per-RPC
// metrics count every one.
func accessLogger(log *slog.Logger, slow time.Duration, samples *refusalLog) logging.LoggerFunc {
	return func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		if wasRefused(ctx) {
			return // logged, sampled, where it was refused
		}
		level := accessLevel(slog.Level(lvl), fields, slow)
		if !log.Enabled(ctx, level) {
			return
		}
		if method, code, _ := callOf(fields); code != "OK" && isRoutineRead(method) && !log.Enabled(ctx, slog.LevelDebug) {
			now, suppressed := samples.sample("failed " + method + " " + code)
			if !now {
				return
			}
			fields = append(fields, "suppressed", suppressed)
		}
		log.Log(ctx, level, msg, fields...)
	}
}
