//! Translation of DataFusion physical expressions into the pushdown [`Expr`] the sandbox
//! evaluates. Whatever does not translate stays in the intermediary.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{
    BinaryExpr, CastExpr, Column, InListExpr, IsNotNullExpr, IsNullExpr, LikeExpr, Literal, NotExpr,
};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use pushdown_protocol::{ArithmeticOp, CmpOp, Expr, Literal as Lit};

use crate::plugins::PluginScalar;

/// Converts a DataFusion constant, or `None` for a type the sandbox does not handle.
pub fn literal(value: &ScalarValue) -> Option<Lit> {
    let t = value.data_type();
    if value.is_null() {
        return supported_type(&t).then_some(Lit::Null(t));
    }
    Some(match value {
        ScalarValue::Boolean(Some(b)) => Lit::Bool(*b),
        ScalarValue::Int8(Some(v)) => Lit::Int(i64::from(*v), t),
        ScalarValue::Int16(Some(v)) => Lit::Int(i64::from(*v), t),
        ScalarValue::Int32(Some(v)) => Lit::Int(i64::from(*v), t),
        ScalarValue::Int64(Some(v)) => Lit::Int(*v, t),
        ScalarValue::UInt8(Some(v)) => Lit::UInt(u64::from(*v), t),
        ScalarValue::UInt16(Some(v)) => Lit::UInt(u64::from(*v), t),
        ScalarValue::UInt32(Some(v)) => Lit::UInt(u64::from(*v), t),
        ScalarValue::UInt64(Some(v)) => Lit::UInt(*v, t),
        ScalarValue::Float32(Some(v)) => Lit::Float(f64::from(*v), t),
        ScalarValue::Float64(Some(v)) => Lit::Float(*v, t),
        ScalarValue::Decimal128(Some(v), _, _) => Lit::Decimal(v.to_string(), t),
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Lit::Utf8(s.clone(), t),
        ScalarValue::Date32(Some(v)) => Lit::Int(i64::from(*v), t),
        ScalarValue::Date64(Some(v)) => Lit::Int(*v, t),
        ScalarValue::TimestampSecond(Some(v), _)
        | ScalarValue::TimestampMillisecond(Some(v), _)
        | ScalarValue::TimestampMicrosecond(Some(v), _)
        | ScalarValue::TimestampNanosecond(Some(v), _) => Lit::Int(*v, t),
        _ => return None,
    })
}

/// True for the column types the sandbox's kernels handle.
pub fn supported_type(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Boolean
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal128(_, _)
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Date32
            | DataType::Date64
            | DataType::Timestamp(_, _)
    )
}

/// Translates `e`, whose column `i` stands for `inputs[i]`, over `schema` (the schema of
/// the expression's input). Returns `None` when any part does not translate.
pub fn translate(e: &Arc<dyn PhysicalExpr>, inputs: &[Expr], schema: &Schema) -> Option<Expr> {
    let out_type = e.data_type(schema).ok()?;
    if !supported_type(&out_type) {
        return None;
    }
    if let Some(c) = e.downcast_ref::<Column>() {
        return inputs.get(c.index()).cloned();
    }
    if let Some(l) = e.downcast_ref::<Literal>() {
        return literal(l.value()).map(Expr::Literal);
    }
    let sub = |x: &Arc<dyn PhysicalExpr>| translate(x, inputs, schema).map(Box::new);
    if let Some(b) = e.downcast_ref::<BinaryExpr>() {
        let (l, r) = (sub(b.left())?, sub(b.right())?);
        let cmp = |op| Some(Expr::Cmp(op, l.clone(), r.clone()));
        let arith = |op| Some(Expr::Arithmetic(op, l.clone(), r.clone()));
        return match b.op() {
            Operator::Eq => cmp(CmpOp::Eq),
            Operator::NotEq => cmp(CmpOp::NotEq),
            Operator::Lt => cmp(CmpOp::Lt),
            Operator::LtEq => cmp(CmpOp::LtEq),
            Operator::Gt => cmp(CmpOp::Gt),
            Operator::GtEq => cmp(CmpOp::GtEq),
            Operator::Plus => arith(ArithmeticOp::Add),
            Operator::Minus => arith(ArithmeticOp::Sub),
            Operator::Multiply => arith(ArithmeticOp::Mul),
            // DataFusion rescales decimal quotients its own way; only float and integer
            // division is pushed down.
            Operator::Divide | Operator::Modulo
                if matches!(out_type, DataType::Decimal128(_, _)) =>
            {
                None
            }
            Operator::Divide => arith(ArithmeticOp::Div),
            Operator::Modulo => arith(ArithmeticOp::Rem),
            Operator::And => Some(flatten(true, *l, *r)),
            Operator::Or => Some(flatten(false, *l, *r)),
            _ => None,
        };
    }
    if let Some(c) = e.downcast_ref::<CastExpr>() {
        return Some(Expr::Cast(sub(c.expr())?, c.cast_type().clone()));
    }
    if let Some(n) = e.downcast_ref::<NotExpr>() {
        return Some(Expr::Not(sub(n.arg())?));
    }
    if let Some(n) = e.downcast_ref::<IsNullExpr>() {
        return Some(Expr::IsNull {
            expr: sub(n.arg())?,
            negated: false,
        });
    }
    if let Some(n) = e.downcast_ref::<IsNotNullExpr>() {
        return Some(Expr::IsNull {
            expr: sub(n.arg())?,
            negated: true,
        });
    }
    if let Some(i) = e.downcast_ref::<InListExpr>() {
        let list = i
            .list()
            .iter()
            .map(|x| translate(x, inputs, schema))
            .collect::<Option<Vec<_>>>()?;
        return Some(Expr::InList {
            expr: sub(i.expr())?,
            list,
            negated: i.negated(),
        });
    }
    if let Some(f) = e.downcast_ref::<ScalarFunctionExpr>() {
        // A registered scalar plugin runs on the storage node like any other expression.
        let inner: &dyn std::any::Any = f.fun().inner().as_ref();
        let plugin = inner.downcast_ref::<PluginScalar>()?;
        let args = f
            .args()
            .iter()
            .map(|a| translate(a, inputs, schema))
            .collect::<Option<Vec<_>>>()?;
        return Some(Expr::Call {
            plugin: plugin.reference().clone(),
            args,
            return_type: out_type,
        });
    }
    if let Some(l) = e.downcast_ref::<LikeExpr>() {
        return Some(Expr::Like {
            expr: sub(l.expr())?,
            pattern: sub(l.pattern())?,
            negated: l.negated(),
            case_insensitive: l.case_insensitive(),
        });
    }
    None
}

fn flatten(and: bool, l: Expr, r: Expr) -> Expr {
    let mut items = Vec::new();
    for side in [l, r] {
        match (and, side) {
            (true, Expr::And(xs)) | (false, Expr::Or(xs)) => items.extend(xs),
            (_, x) => items.push(x),
        }
    }
    if and {
        Expr::And(items)
    } else {
        Expr::Or(items)
    }
}

/// Splits a conjunction into its conjuncts.
pub fn conjuncts(e: &Arc<dyn PhysicalExpr>) -> Vec<Arc<dyn PhysicalExpr>> {
    if let Some(b) = e.downcast_ref::<BinaryExpr>() {
        if *b.op() == Operator::And {
            let mut out = conjuncts(b.left());
            out.extend(conjuncts(b.right()));
            return out;
        }
    }
    vec![e.clone()]
}
