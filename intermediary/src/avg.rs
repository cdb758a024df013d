//! `avg` as DuckDB and PostgreSQL's float `avg` define it: the average of integers, floats
//! and decimals is a DOUBLE. DataFusion's built-in `avg` returns a decimal with four more
//! digits of scale for decimal input; this wrapper coerces the argument to Float64 first
//! and delegates everything else, so partial states are `(count UInt64, sum Float64)`.

use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::types::{logical_float64, NativeType};
use datafusion::common::Result;
use datafusion::functions_aggregate::average::Avg;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Coercion, GroupsAccumulator, Signature,
    TypeSignature, TypeSignatureClass, Volatility,
};

/// `avg(x)` returning DOUBLE for numeric `x`; see the module doc.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct FloatAvg {
    inner: Avg,
    signature: Signature,
}

impl FloatAvg {
    /// Creates the function.
    pub fn new() -> Self {
        let signature = Signature::one_of(
            vec![
                TypeSignature::Coercible(vec![Coercion::new_exact(TypeSignatureClass::Duration)]),
                TypeSignature::Coercible(vec![Coercion::new_implicit(
                    TypeSignatureClass::Native(logical_float64()),
                    vec![
                        TypeSignatureClass::Integer,
                        TypeSignatureClass::Float,
                        TypeSignatureClass::Decimal,
                    ],
                    NativeType::Float64,
                )]),
            ],
            Volatility::Immutable,
        );
        Self {
            inner: Avg::new(),
            signature,
        }
    }

    /// The function as a UDAF to register in place of the built-in `avg`.
    pub fn udaf() -> AggregateUDF {
        AggregateUDF::new_from_impl(Self::new())
    }
}

impl Default for FloatAvg {
    fn default() -> Self {
        Self::new()
    }
}

impl AggregateUDFImpl for FloatAvg {
    fn name(&self) -> &str {
        "avg"
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn accumulator(&self, acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.inner.accumulator(acc_args)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.inner.state_fields(args)
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        self.inner.groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        self.inner.create_groups_accumulator(args)
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.inner.create_sliding_accumulator(args)
    }

    fn default_value(&self, data_type: &DataType) -> Result<datafusion::common::ScalarValue> {
        self.inner.default_value(data_type)
    }
}
