//! Resources whose shape is a service's protobuf message (an action definition, with its
//! nine kinds) go over REST as that message's canonical JSON (proto field names, enums by
//! name), and their OpenAPI schemas are generated from the same descriptors, so the JSON,
//! the schema and the gRPC API cannot drift apart. Requests are strict: an unknown field is
//! refused, and so is a field the server sets.

use std::sync::LazyLock;

use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor,
    SerializeOptions,
};
use serde_json::Value;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type,
};
use utoipa::openapi::{RefOr, Schema};

use super::problem::{ApiError, FieldError};

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(switchboard_proto::FILE_DESCRIPTOR_SET)
        .expect("the compiled descriptor set decodes")
});

fn descriptor(name: &str) -> MessageDescriptor {
    POOL.get_message_by_name(name)
        .unwrap_or_else(|| panic!("`{name}` is not in the descriptor set"))
}

/// `message` (of the protobuf type `name`) as canonical JSON with proto field names.
pub fn to_json<M: prost::Message>(name: &str, message: &M) -> Value {
    let dynamic = DynamicMessage::decode(descriptor(name), message.encode_to_vec().as_slice())
        .expect("a message decodes as its own type");
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false)
        .stringify_64_bit_integers(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .unwrap_or(Value::Null)
}

/// A request body of protobuf type `name`; `server_fields` (set by the server) and unknown
/// fields are refused, each named.
pub fn from_json<M: prost::Message + Default>(
    name: &str,
    value: Value,
    server_fields: &[&str],
) -> Result<M, ApiError> {
    if let Some(object) = value.as_object() {
        let refused: Vec<FieldError> = server_fields
            .iter()
            .filter(|f| object.contains_key(**f))
            .map(|f| FieldError {
                field: (*f).to_owned(),
                detail: "set by the server; leave it out".into(),
            })
            .collect();
        if !refused.is_empty() {
            return Err(ApiError::invalid(refused));
        }
    } else {
        return Err(ApiError::field("body", "a JSON object"));
    }
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let dynamic = DynamicMessage::deserialize_with_options(descriptor(name), value, &options)
        .map_err(|e| {
            let detail = e.to_string();
            let field = detail
                .split('`')
                .nth(1)
                .map_or_else(|| "body".to_owned(), str::to_owned);
            ApiError::field(field, detail)
        })?;
    M::decode(dynamic.encode_to_vec().as_slice())
        .map_err(|e| ApiError::field("body", e.to_string()))
}

/// The JSON schema of protobuf type `name`, without `omit` at the top level; `strict`
/// refuses properties it does not list (requests).
pub fn schema(name: &str, omit: &[&str], strict: bool) -> Schema {
    message_schema(&descriptor(name), omit, strict, 0)
}

/// Nested messages deeper than this are any object (the descriptors are not recursive
/// today; this only bounds a future one).
const MAX_DEPTH: usize = 8;

fn message_schema(
    message: &MessageDescriptor,
    omit: &[&str],
    strict: bool,
    depth: usize,
) -> Schema {
    let mut object = ObjectBuilder::new().schema_type(Type::Object);
    if depth > MAX_DEPTH {
        return object.build().into();
    }
    for field in message.fields() {
        if depth == 0 && omit.contains(&field.name()) {
            continue;
        }
        object = object.property(field.name(), field_schema(&field, strict, depth));
    }
    if strict {
        object = object.additional_properties(Some(AdditionalProperties::FreeForm(false)));
    }
    object.build().into()
}

fn field_schema(field: &FieldDescriptor, strict: bool, depth: usize) -> RefOr<Schema> {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            unreachable!("a map field's kind is its entry message")
        };
        let value = entry.map_entry_value_field();
        return ObjectBuilder::new()
            .schema_type(Type::Object)
            .additional_properties(Some(kind_schema(&value.kind(), strict, depth)))
            .build()
            .into();
    }
    let single = kind_schema(&field.kind(), strict, depth);
    if field.is_list() {
        return ArrayBuilder::new().items(single).build().into();
    }
    single
}

fn kind_schema(kind: &Kind, strict: bool, depth: usize) -> RefOr<Schema> {
    let scalar = |t: Type| -> RefOr<Schema> { ObjectBuilder::new().schema_type(t).build().into() };
    match kind {
        Kind::Double | Kind::Float => scalar(Type::Number),
        Kind::Int32
        | Kind::Sint32
        | Kind::Sfixed32
        | Kind::Uint32
        | Kind::Fixed32
        | Kind::Int64
        | Kind::Sint64
        | Kind::Sfixed64
        | Kind::Uint64
        | Kind::Fixed64 => scalar(Type::Integer),
        Kind::Bool => scalar(Type::Boolean),
        Kind::String | Kind::Bytes => scalar(Type::String),
        Kind::Enum(e) => ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(e.values().map(|v| v.name().to_owned())))
            .build()
            .into(),
        Kind::Message(m) if m.full_name() == "google.protobuf.Timestamp" => ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .build()
            .into(),
        Kind::Message(m) => message_schema(m, &[], strict, depth + 1).into(),
    }
}

/// Declares a type that stands for protobuf message `$message` in the OpenAPI document,
/// named `$name`, without the top-level fields `$omit`, strict or not.
macro_rules! proto_schema {
    ($(#[$doc:meta])* $ty:ident = $message:literal as $name:literal, omit [$($omit:literal),*], strict = $strict:literal) => {
        $(#[$doc])*
        pub struct $ty;

        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
                $crate::rest::proto_json::schema($message, &[$($omit),*], $strict).into()
            }
        }

        impl utoipa::ToSchema for $ty {
            fn name() -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed($name)
            }
        }
    };
}
pub(crate) use proto_schema;
