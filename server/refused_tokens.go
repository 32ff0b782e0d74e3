package server

import (
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// refusedTokens counts the GetAccessToken calls answered with an error, by
// gRPC code and google.rpc.ErrorInfo reason: what consumers are being
// refused, which the broker's refresh counters do not show (a call on a
// family already revoked runs no refresh). The labels' values come from
// this package's own statuses, so the series are few.
type refusedTokens struct{ vec *prometheus.CounterVec }

func newRefusedTokens(reg prometheus.Registerer) refusedTokens {
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "rotavault", Name: "access_tokens_refused_total",
		Help: "GetAccessToken calls answered with an error, by gRPC code and ErrorInfo reason (empty when the status carries none): code=\"FailedPrecondition\",reason=\"REAUTHENTICATION_REQUIRED\" counts consumers refused because their credential's family is revoked or was never installed. Calls refused before the handler (authentication, authorization, rate limits) are not counted here.",
	}, []string{"code", "reason"})
	// Present from the start, so that increase() sees the first refusal.
	vec.WithLabelValues(codes.FailedPrecondition.String(), ReasonReauthenticationRequired)
	if reg != nil {
		reg.MustRegister(vec)
	}
	return refusedTokens{vec: vec}
}

// count counts st, a status error toStatus made.
func (r refusedTokens) count(err error) {
	if r.vec == nil {
		return
	}
	st, _ := status.FromError(err)
	reason := ""
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			reason = info.GetReason()
			break
		}
	}
	r.vec.WithLabelValues(st.Code().String(), reason).Inc()
}
