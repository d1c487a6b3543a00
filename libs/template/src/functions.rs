//! Functions every template and expression may call: date arithmetic and unit conversion.
//! All are pure and deterministic (there is no `now()`): a calculation gives the same
//! answer every time it is replayed.
//!
//! Dates are `YYYY-MM-DD` or RFC 3339 date-times; results keep the form of the input, except
//! that adding hours, minutes or seconds to a date gives a date-time at UTC.

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, Duration, Month, OffsetDateTime, PrimitiveDateTime, Time};

pub(crate) fn register(env: &mut Environment<'static>) {
    env.add_function("date_add", date_add);
    env.add_function("days_between", days_between);
    env.add_function("date_part", date_part);
    env.add_function("convert", convert);
}

/// A parsed date: a calendar date, or a date-time with its offset.
#[derive(Debug, Clone, Copy)]
enum When {
    Date(Date),
    DateTime(OffsetDateTime),
}

impl When {
    fn parse(text: &str) -> Result<Self, Error> {
        let date_only = format_description!("[year]-[month]-[day]");
        if let Ok(date) = Date::parse(text, date_only) {
            return Ok(When::Date(date));
        }
        OffsetDateTime::parse(text, &Rfc3339)
            .map(When::DateTime)
            .map_err(|_| {
                invalid(format!(
                    "`{text}` is not a date (YYYY-MM-DD) or an RFC 3339 date-time"
                ))
            })
    }

    fn at_utc(self) -> OffsetDateTime {
        match self {
            When::Date(date) => PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_utc(),
            When::DateTime(at) => at,
        }
    }

    fn format(self) -> Result<String, Error> {
        match self {
            When::Date(date) => Ok(date
                .format(format_description!("[year]-[month]-[day]"))
                .map_err(|e| invalid(e.to_string()))?),
            When::DateTime(at) => at.format(&Rfc3339).map_err(|e| invalid(e.to_string())),
        }
    }
}

fn invalid(reason: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, reason)
}

/// `date_add(date, days=, weeks=, months=, hours=, minutes=, seconds=)`; amounts may be
/// negative. Months move by calendar month, clamped to the month's last day.
fn date_add(date: String, kwargs: Kwargs) -> Result<String, Error> {
    let amount =
        |name: &str| -> Result<i64, Error> { Ok(kwargs.get::<Option<i64>>(name)?.unwrap_or(0)) };
    let (months, weeks, days) = (amount("months")?, amount("weeks")?, amount("days")?);
    let (hours, minutes, seconds) = (amount("hours")?, amount("minutes")?, amount("seconds")?);
    kwargs.assert_all_used()?;
    let when = When::parse(&date)?;
    let when = match when {
        When::Date(d) if hours == 0 && minutes == 0 && seconds == 0 => When::Date(d),
        other => When::DateTime(other.at_utc()),
    };
    let overflow = || invalid(format!("`{date}` moved out of the supported range"));
    // Bounded so no amount can overflow a duration: ten million of any unit is beyond
    // every calendar anyway.
    if [months, weeks, days, hours, minutes, seconds]
        .iter()
        .any(|n| n.unsigned_abs() > 10_000_000)
    {
        return Err(overflow());
    }
    let shift = Duration::weeks(weeks)
        + Duration::days(days)
        + Duration::hours(hours)
        + Duration::minutes(minutes)
        + Duration::seconds(seconds);
    let moved = match when {
        When::Date(d) => When::Date(
            add_months(d, months)
                .and_then(|d| d.checked_add(shift))
                .ok_or_else(overflow)?,
        ),
        When::DateTime(at) => {
            let date = add_months(at.date(), months).ok_or_else(overflow)?;
            When::DateTime(
                at.replace_date(date)
                    .checked_add(shift)
                    .ok_or_else(overflow)?,
            )
        }
    };
    moved.format()
}

fn add_months(date: Date, months: i64) -> Option<Date> {
    let index = i64::from(date.year()) * 12 + i64::from(u8::from(date.month())) - 1 + months;
    let year = i32::try_from(index.div_euclid(12)).ok()?;
    let month = Month::try_from(u8::try_from(index.rem_euclid(12) + 1).ok()?).ok()?;
    let day = date.day().min(time::util::days_in_month(month, year));
    Date::from_calendar_date(year, month, day).ok()
}

/// Whole days from `from` to `to` (negative when `to` is earlier).
fn days_between(from: String, to: String) -> Result<i64, Error> {
    let (from, to) = (When::parse(&from)?, When::parse(&to)?);
    Ok((to.at_utc() - from.at_utc()).whole_days())
}

/// One part of a date: year, month, day, weekday (1 = Monday), iso_week, day_of_year,
/// hour, minute, second.
fn date_part(date: String, part: String) -> Result<i64, Error> {
    let when = When::parse(&date)?;
    let at = match when {
        When::Date(_) => when.at_utc(),
        // The date-time's own offset decides its calendar day.
        When::DateTime(at) => at,
    };
    Ok(match part.as_str() {
        "year" => i64::from(at.year()),
        "month" => i64::from(u8::from(at.month())),
        "day" => i64::from(at.day()),
        "weekday" => i64::from(at.weekday().number_from_monday()),
        "iso_week" => i64::from(at.iso_week()),
        "day_of_year" => i64::from(at.ordinal()),
        "hour" => i64::from(at.hour()),
        "minute" => i64::from(at.minute()),
        "second" => i64::from(at.second()),
        "offset_minutes" => i64::from(at.offset().whole_minutes()),
        other => {
            return Err(invalid(format!(
                "unknown date part `{other}`; known: year, month, day, weekday, iso_week, \
                 day_of_year, hour, minute, second, offset_minutes"
            )));
        }
    })
}

/// A unit: its dimension and how many base units one of it is. Temperatures are handled
/// apart, since they have an offset.
fn unit(name: &str) -> Option<(&'static str, f64)> {
    Some(match name {
        "mm" => ("length", 0.001),
        "cm" => ("length", 0.01),
        "m" => ("length", 1.0),
        "km" => ("length", 1000.0),
        "in" => ("length", 0.0254),
        "ft" => ("length", 0.3048),
        "yd" => ("length", 0.9144),
        "mi" => ("length", 1609.344),
        "mg" => ("mass", 0.000_001),
        "g" => ("mass", 0.001),
        "kg" => ("mass", 1.0),
        "t" => ("mass", 1000.0),
        "oz" => ("mass", 0.028_349_523_125),
        "lb" => ("mass", 0.453_592_37),
        "ml" => ("volume", 0.001),
        "l" => ("volume", 1.0),
        "m3" => ("volume", 1000.0),
        "floz" => ("volume", 0.029_573_529_562_5),
        "gal" => ("volume", 3.785_411_784),
        "s" => ("time", 1.0),
        "min" => ("time", 60.0),
        "h" => ("time", 3600.0),
        "d" => ("time", 86_400.0),
        "wk" => ("time", 604_800.0),
        "b" => ("data", 1.0),
        "kb" => ("data", 1000.0),
        "mb" => ("data", 1_000_000.0),
        "gb" => ("data", 1_000_000_000.0),
        "kib" => ("data", 1024.0),
        "mib" => ("data", 1_048_576.0),
        "gib" => ("data", 1_073_741_824.0),
        "kmh" => ("speed", 1.0 / 3.6),
        "mps" => ("speed", 1.0),
        "mph" => ("speed", 0.447_04),
        _ => return None,
    })
}

/// `convert(value, from, to)` between units of one dimension: length (mm cm m km in ft yd
/// mi), mass (mg g kg t oz lb), volume (ml l m3 floz gal), time (s min h d wk), data (b kb
/// mb gb kib mib gib), speed (kmh mps mph) and temperature (c f k).
fn convert(value: Value, from: String, to: String) -> Result<f64, Error> {
    let amount = f64::try_from(value.clone())
        .map_err(|_| invalid(format!("convert: `{value}` is not a number")))?;
    let (from_l, to_l) = (from.to_ascii_lowercase(), to.to_ascii_lowercase());
    if let (Some(kelvin), Some(back)) = (to_kelvin(&from_l), from_kelvin(&to_l)) {
        return Ok(back(kelvin(amount)));
    }
    match (unit(&from_l), unit(&to_l)) {
        (Some((a, from_base)), Some((b, to_base))) if a == b => Ok(amount * from_base / to_base),
        (Some((a, _)), Some((b, _))) => Err(invalid(format!(
            "convert: `{from}` is a {a} and `{to}` a {b}; they do not convert"
        ))),
        (None, _) => Err(invalid(format!("convert: unknown unit `{from}`"))),
        (_, None) => Err(invalid(format!("convert: unknown unit `{to}`"))),
    }
}

fn to_kelvin(unit: &str) -> Option<fn(f64) -> f64> {
    Some(match unit {
        "c" => |c| c + 273.15,
        "f" => |f| (f - 32.0) * 5.0 / 9.0 + 273.15,
        "k" => |k| k,
        _ => return None,
    })
}

fn from_kelvin(unit: &str) -> Option<fn(f64) -> f64> {
    Some(match unit {
        "c" => |k| k - 273.15,
        "f" => |k| (k - 273.15) * 9.0 / 5.0 + 32.0,
        "k" => |k| k,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::Renderer;

    fn eval(expression: &str) -> serde_json::Value {
        Renderer::default()
            .evaluate_expression("test", expression, &json!({"input": {"d": "2024-01-31"}}))
            .unwrap_or_else(|e| panic!("{expression}: {e}"))
    }

    #[test]
    fn dates_move_by_calendar() {
        assert_eq!(eval("date_add(input.d, months=1)"), json!("2024-02-29"));
        assert_eq!(eval("date_add(input.d, days=-31)"), json!("2023-12-31"));
        assert_eq!(eval("date_add(input.d, weeks=1)"), json!("2024-02-07"));
        assert_eq!(
            eval("date_add(input.d, hours=25)"),
            json!("2024-02-01T01:00:00Z")
        );
        assert_eq!(
            eval("date_add('2024-03-10T23:30:00+02:00', minutes=45)"),
            json!("2024-03-11T00:15:00+02:00")
        );
        assert_eq!(eval("days_between('2024-01-01', input.d)"), json!(30));
        assert_eq!(eval("date_part(input.d, 'weekday')"), json!(3));
        assert_eq!(eval("date_part('2024-12-30', 'iso_week')"), json!(1));
    }

    #[test]
    fn units_convert_within_a_dimension() {
        assert_eq!(eval("convert(10, 'km', 'm')"), json!(10000.0));
        assert_eq!(eval("convert(100, 'c', 'f')"), json!(212.0));
        assert_eq!(eval("convert(1, 'lb', 'g') | round(3)"), json!(453.592));
        let err = Renderer::default()
            .evaluate_expression("x", "convert(1, 'kg', 'm')", &json!({}))
            .unwrap_err();
        assert!(err.to_string().contains("do not convert"), "{err}");
    }

    #[test]
    fn bad_dates_say_what_they_expected() {
        let err = Renderer::default()
            .evaluate_expression("x", "date_add('31/01/2024', days=1)", &json!({}))
            .unwrap_err();
        assert!(err.to_string().contains("YYYY-MM-DD"), "{err}");
    }
}
