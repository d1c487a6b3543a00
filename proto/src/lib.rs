//! Generated protobuf messages and gRPC stubs for every Switchboard API, and the encoded
//! file descriptor set that the gRPC reflection service serves.
//!
//! The `.proto` files under `switchboard/` are the single definition of every API and event;
//! the JSON forms used elsewhere are derived from the same messages.
#![forbid(unsafe_code)]
#![allow(clippy::all)]

/// Encoded `FileDescriptorSet` of every Switchboard `.proto`, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/switchboard_descriptor.bin"));

pub mod events {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/switchboard.events.v1.rs"));
    }
}

pub mod actions {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/switchboard.actions.v1.rs"));
    }
}

pub mod conversations {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/switchboard.conversations.v1.rs"));
    }
}

pub mod webhooks {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/switchboard.webhooks.v1.rs"));
    }
}

pub mod flows {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/switchboard.flows.v1.rs"));
    }
}

pub mod connexease {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/switchboard.connexease.v1.rs"));
    }
}

pub mod gateway {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/switchboard.gateway.v1.rs"));
    }
}

pub mod insights {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/switchboard.insights.v1.rs"));
    }
}
