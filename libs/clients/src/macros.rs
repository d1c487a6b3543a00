//! The shape every typed client shares, written once: the struct, its constructor, its
//! per-client settings, and one method per unary RPC that goes through
//! [`Transport::unary`](crate::transport::Transport::unary).

/// Declares a typed client named `$client` for the service `$service` (its short name)
/// over the generated stub `$stub`, with one `async fn` per listed RPC taking the proto
/// request and answering the proto response.
///
/// An RPC marked `@once` is never retried: it has effects outside our logs (a call to
/// Connexease, a test run's real HTTP request) or no request id to make a retry safe, so
/// an `UNAVAILABLE` answer is the caller's to judge.
macro_rules! typed_client {
    (@attempts) => {
        crate::MAX_ATTEMPTS
    };
    (@attempts once) => {
        1
    };
    (
        $(#[$doc:meta])*
        $client:ident for $service:literal via $stub:ident {
            $(
                $(#[$rpc_doc:meta])*
                $(@$once:ident)? fn $method:ident($request:ty) -> $response:ty;
            )*
        }
    ) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $client(crate::transport::Transport);

        impl $client {
            #[doc = concat!(
                "A client of the ", $service, " service at `config.url`. Nothing is ",
                "connected until the first call, so the services start in any order.\n\n",
                "Fails only on a malformed configuration. Must be called inside a Tokio ",
                "runtime."
            )]
            pub fn connect_lazy(
                config: &crate::ClientConfig,
            ) -> ::std::result::Result<Self, crate::ClientError> {
                crate::transport::Transport::connect_lazy(config, $service).map(Self)
            }

            /// The deadline of each call, retries included.
            pub fn deadline(&self) -> ::std::time::Duration {
                self.0.deadline()
            }

            /// A clone (same connection) whose calls each end at `deadline`.
            pub fn with_deadline(&self, deadline: ::std::time::Duration) -> Self {
                Self(self.0.with_deadline(deadline))
            }

            /// A clone (same connection) whose calls join the trace of `traceparent` (a
            /// W3C `traceparent`, e.g. one stored with the event being handled) instead of
            /// the current span's. An empty or malformed value changes nothing.
            pub fn with_traceparent(&self, traceparent: &str) -> Self {
                Self(self.0.with_traceparent(traceparent))
            }

            /// A clone (same connection) whose calls act for `actor` (`api_key:<id>`):
            /// the service records it as who acted in the events the call appends.
            pub fn with_actor(&self, actor: &str) -> Self {
                Self(self.0.with_actor(actor))
            }

            $(
                $(#[$rpc_doc])*
                pub async fn $method(
                    &self,
                    request: $request,
                ) -> ::std::result::Result<$response, ::tonic::Status> {
                    self.0
                        .unary(
                            stringify!($method),
                            self.0.deadline(),
                            typed_client!(@attempts $($once)?),
                            request,
                            |channel, request| async move {
                                $stub::new(channel).$method(request).await
                            },
                        )
                        .await
                }
            )*
        }
    };
}
