"""Checks over the expanded SAM template (run by `make check`).

template.yaml is expanded offline with aws-sam-translator (the library
`sam validate` and CloudFormation's SAM transform use), then every
parameter combination a deployer can choose is resolved here: conditions
evaluated, Fn::If branches taken, parameter Refs substituted. The tests then
read the resources that would exist, the way CloudFormation would create
them, and check the stack's promises, in both profiles (prod: Aurora; dev:
one small instance, endpoints in one AZ, inline keys): what is created by
default, that each bring-your-own parameter switches its part off and is
the same whatever the profile, least privilege in every
IAM statement, and the custom resource's wiring. The application secret's
resource policy is also evaluated, statement by statement, against the
request contexts of the principals that matter (the readers, the rotation
function, the execution role, a look-alike role, CloudFormation acting for
the deployer, the account root). The one function whose code the template
carries (PoolJwksFunction, which fetches the created pool's keys at deploy
time) is loaded from it and run in-process against good and hostile input,
with its network calls replaced.
"""

import ast
import base64
import copy
import fnmatch
import itertools
import json
import logging
import os
import re
import secrets
import sys
import types
import unittest
from unittest import mock

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = os.path.join(ROOT, "template.yaml")

# Services whose permissions must always name their resources.
SENSITIVE = ("sts:", "secretsmanager:", "kms:", "iam:", "rds-db:")

# Given in every stack below unless a test says otherwise: the deploy is
# refused without it (rule MigrationNeedsS3PrefixList, tested on its own).
REQUIRED = {"S3PrefixListId": "pl-63a5400a"}
EXISTING_NETWORK = {
    "VpcId": "vpc-0abc",
    "VpcSubnetIds": "subnet-0a,subnet-0b",
    "VpcSecurityGroupIds": "sg-0proxyclient",
    "AdminHttpsCidr": "10.1.0.0/16",
}
EXISTING_DATABASE = {
    "DbSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:app-AbCdEf",
    "DbProxyEndpoint": "proxy.proxy-xyz.us-east-1.rds.amazonaws.com",
    # The control plane's role, registered with the same proxy (rule
    # ExistingDatabaseNamesControlSecret).
    "ControlDbSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:control-GhIjKl",
}
EXISTING_MASTER = {
    "DbMasterSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:rds!cluster-1-AbCdEf",
    "DbAdminHost": "db.cluster-xyz.us-east-1.rds.amazonaws.com",
    "DbAdminCidr": "10.1.32.0/20",
}
EXISTING_KMS = {"DbSecretKmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/0000-1111"}
EXISTING_IDP = {
    "JwtIssuer": "https://idp.example.com/",
    "JwtAudience": "client-a,client-b",
    "JwtJwksUrl": "https://idp.example.com/.well-known/jwks.json",
}
DOCUMENT = '{"keys":[]}'
INLINE = {"JwksMode": "inline", "JwksDocument": DOCUMENT}
# Inline without a document: the created pool's keys are fetched at deploy
# time (PoolJwks); an existing IdP's are refused (rule InlineNeedsDocument).
INLINE_FETCHED = {"JwksMode": "inline"}
NAT = {"JwksMode": "nat"}
# Profile dev: what the stack creates for itself is smaller. Its JwksMode
# auto means inline, with the created pool's keys fetched at deploy time:
# nothing else to give.
DEV = {"Profile": "dev"}
PROFILES = [("prod", {}), ("dev", DEV)]
FETCHED = {"Fn::GetAtt": ["PoolJwks", "Document"]}


class _Loader:
    """No managed policy is named by short name, so nothing is looked up."""

    def load(self):
        return {}


def expand(code_uri="s3://bucket/tenant-users.zip"):
    """The template after the SAM transform, as CloudFormation receives it."""
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with open(TEMPLATE) as f:
        raw = yaml_parse(f.read())
    source = copy.deepcopy(raw)
    # `sam deploy` uploads the code and puts its S3 location here; the
    # location is what names a function version (see SchemaVersion). The
    # template carries the code of an InlineCode function itself.
    for resource in source["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function" and "InlineCode" not in resource["Properties"]:
            resource["Properties"]["CodeUri"] = code_uri
    return raw, transform(source, {}, _Loader())


class NoValue:
    pass


class Stack:
    """The expanded template resolved for one set of parameter values."""

    def __init__(self, template, overrides=None, base=REQUIRED):
        self.template = template
        overrides = {**base, **(overrides or {})}
        params = {}
        for name, spec in template["Parameters"].items():
            value = overrides.get(name, spec.get("Default"))
            if spec["Type"] == "CommaDelimitedList":
                # As CloudFormation: an empty list parameter is [""].
                value = [v.strip() for v in str(value or "").split(",")]
            params[name] = value
        unknown = set(overrides) - set(params)
        assert not unknown, f"unknown parameters {unknown}"
        self.params = params
        self.conditions = {}
        for name in template["Conditions"]:
            self.condition(name)
        self.resources = {
            name: self.resolve(resource)
            for name, resource in template["Resources"].items()
            if "Condition" not in resource or self.conditions[resource["Condition"]]
        }

    # --- intrinsic functions -------------------------------------------------
    def condition(self, name):
        if name not in self.conditions:
            self.conditions[name] = self.truth(self.template["Conditions"][name])
        return self.conditions[name]

    def truth(self, node):
        (fn, arg), = node.items()
        if fn == "Fn::Equals":
            a, b = (self.value(x) for x in arg)
            return a == b
        if fn == "Fn::Not":
            return not self.truth(arg[0])
        if fn == "Fn::And":
            return all(self.truth(x) for x in arg)
        if fn == "Fn::Or":
            return any(self.truth(x) for x in arg)
        if fn == "Condition":
            return self.condition(arg)
        if fn == "Fn::Contains":
            return self.value(arg[1]) in self.value(arg[0])
        raise AssertionError(f"unsupported condition function {fn}")

    def value(self, node):
        """A condition or rule operand, fully resolved to a Python value."""
        if isinstance(node, dict):
            (fn, arg), = node.items()
            if fn == "Ref":
                return self.params[arg]
            if fn == "Fn::Join":
                return arg[0].join(self.value(arg[1]) if isinstance(arg[1], dict) else
                                   [self.value(x) for x in arg[1]])
            return self.truth(node)
        return node

    def resolve(self, node):
        """Take every Fn::If branch and substitute parameters; keep the rest."""
        if isinstance(node, list):
            items = [self.resolve(x) for x in node]
            return [x for x in items if not isinstance(x, NoValue)]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (fn, arg), = node.items()
            if fn == "Fn::If":
                name, yes, no = arg
                return self.resolve(yes if self.condition(name) else no)
            if fn == "Ref" and arg == "AWS::NoValue":
                return NoValue()
            if fn == "Ref" and arg in self.params:
                return self.params[arg]
        out = {}
        for key, child in node.items():
            child = self.resolve(child)
            if not isinstance(child, NoValue):
                out[key] = child
        return out

    def rules_hold(self):
        """Evaluate the template's Rules the way CloudFormation does."""
        failed = []
        for name, rule in self.template.get("Rules", {}).items():
            if "RuleCondition" in rule and not self.truth(rule["RuleCondition"]):
                continue
            for assertion in rule["Assertions"]:
                if not self.truth(assertion["Assert"]):
                    failed.append(name)
        return failed

    # --- reading ---------------------------------------------------------------
    def of_type(self, kind):
        return {n: r for n, r in self.resources.items() if r["Type"] == kind}

    def props(self, name):
        return self.resources[name]["Properties"]

    def env(self, function):
        return self.props(function)["Environment"]["Variables"]

    def statements(self):
        """(owner, statement) for every identity policy statement."""
        for name, res in self.resources.items():
            props = res.get("Properties", {})
            if res["Type"] == "AWS::IAM::Role":
                for policy in props.get("Policies", []):
                    for st in policy["PolicyDocument"]["Statement"]:
                        yield name, st
            if res["Type"] == "AWS::IAM::Policy":
                for role in props["Roles"]:
                    for st in props["PolicyDocument"]["Statement"]:
                        yield ref_name(role), st


def as_list(x):
    return x if isinstance(x, list) else [x]


def ref_name(node):
    """The logical id a Ref or GetAtt points at, else None."""
    if isinstance(node, dict):
        if "Ref" in node:
            return node["Ref"]
        if "Fn::GetAtt" in node:
            target = node["Fn::GetAtt"]
            return target[0] if isinstance(target, list) else target.split(".")[0]
    return None


def mentions(node, logical_id):
    return json.dumps(node).find(f'"{logical_id}"') >= 0


# --- resource policies, evaluated -------------------------------------------
# What CloudFormation would put in a policy, made concrete: the pseudo
# parameters of one deployment and made-up physical names of this stack's
# roles (CloudFormation names them <stack>-<LogicalId>-<suffix>).
STACK_NAME = "tenant-users"
ACCOUNT = "123456789012"
PSEUDO = {"AWS::Partition": "aws", "AWS::AccountId": ACCOUNT, "AWS::StackName": STACK_NAME,
          "AWS::Region": "us-east-1", "AWS::URLSuffix": "amazonaws.com"}
CREATED_VPC = "vpc-0created"


def role_arn(name):
    return f"arn:aws:iam::{ACCOUNT}:role/{name}"


def stack_role(logical_id):
    return role_arn(f"{STACK_NAME}-{logical_id}-1A2B3C4D5E6F")


# The hosted rotation function: its role is made in the transform's nested
# stack (a generated name under this stack's), its session is named after
# the function (RotationLambdaName), its calls come through the VPC.
ROTATION_ROLE = role_arn(f"{STACK_NAME}-AppSecretRotat-SecretsManagerRDSPostg-0Z9Y8X7W")
ROTATION_FUNCTION = f"{STACK_NAME}-rotation"


def concrete(node):
    """A policy value as IAM would see it after CloudFormation resolved it."""
    if isinstance(node, list):
        return [concrete(x) for x in node]
    if isinstance(node, dict):
        if set(node) == {"Fn::GetAtt"}:
            target, attribute = node["Fn::GetAtt"]
            assert attribute == "Arn", node
            return stack_role(target)
        if set(node) == {"Ref"}:
            if node["Ref"] in PSEUDO:
                return PSEUDO[node["Ref"]]
            assert node["Ref"] == "Vpc", node
            return CREATED_VPC
        if set(node) == {"Fn::Sub"}:
            text = node["Fn::Sub"]
            assert isinstance(text, str), node
            for name, value in PSEUDO.items():
                text = text.replace("${%s}" % name, value)
            assert "${" not in text, text
            return text
        return {k: concrete(v) for k, v in node.items()}
    return node


def _match(operator, value, pattern):
    # The Arn operators and String*Like take * and ? wildcards.
    if operator.startswith("Arn") or "Like" in operator:
        return fnmatch.fnmatchcase(value, pattern)
    return value == pattern


def condition_holds(operator, key, patterns, request):
    """IAM's condition operators, as far as the template uses them."""
    patterns = as_list(patterns)
    if operator.startswith("ForAllValues:"):
        inner = operator.split(":", 1)[1]
        assert inner.endswith("NotEquals"), operator
        return all(not _match(inner, v, p) for v in as_list(request.get(key, [])) for p in patterns)
    assert operator in ("ArnLike", "ArnNotLike", "ArnEquals", "ArnNotEquals",
                        "StringLike", "StringNotLike", "StringEquals", "StringNotEquals"), operator
    negated = "Not" in operator
    if key not in request:
        # A missing key matches no value: the negated operators hold.
        return negated
    hit = any(_match(operator.replace("Not", ""), v, p)
              for v in as_list(request[key]) for p in patterns)
    return not hit if negated else hit


def denied_by(policy, action, request):
    """The Sids of the Deny statements that match this request."""
    sids = []
    for st in concrete(policy["Statement"]):
        assert st["Effect"] == "Deny" and st["Principal"] == "*" and st["Resource"] == "*", st
        if not any(fnmatch.fnmatchcase(action, a) for a in as_list(st["Action"])):
            continue
        if all(condition_holds(op, key, patterns, request)
               for op, keys in st.get("Condition", {}).items()
               for key, patterns in keys.items()):
            sids.append(st["Sid"])
    return sids


def caller(principal_arn, session=None, vpc=None, via=None):
    """The request context of a call: who, as which session, from where."""
    request = {"aws:PrincipalArn": principal_arn}
    if session is not None:
        request["aws:userid"] = f"AROAEXAMPLEID:{session}"
    if vpc is not None:
        request["aws:SourceVpc"] = vpc
    if via is not None:
        request["aws:CalledVia"] = via
    return request


# Every call that reads or changes the application secret or its policy.
SECRET_VALUE_READ = ["secretsmanager:GetSecretValue"]
SECRET_VALUE_WRITE = ["secretsmanager:PutSecretValue", "secretsmanager:UpdateSecretVersionStage"]
SECRET_MANAGEMENT = [f"secretsmanager:{a}" for a in (
    "UpdateSecret", "RotateSecret", "CancelRotateSecret", "DeleteSecret", "RestoreSecret",
    "PutResourcePolicy", "DeleteResourcePolicy", "GetResourcePolicy", "TagResource", "UntagResource")]
SECRET_ACTIONS = SECRET_VALUE_READ + SECRET_VALUE_WRITE + SECRET_MANAGEMENT


def handler_permissions(resource_type, *handlers):
    """The secretsmanager calls CloudFormation makes for a resource type (its
    registry schema, as cfn-lint ships it)."""
    from cfnlint.schema.manager import PROVIDER_SCHEMA_MANAGER
    schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema("us-east-1", resource_type).schema
    return {p for h in handlers for p in schema["handlers"][h]["permissions"]
            if p.startswith("secretsmanager:")}


RAW, EXPANDED = expand()

# What either function may do with the identities of the created pool.
IDENTITY_ACTIONS = [f"cognito-idp:{a}" for a in (
    "AdminCreateUser", "AdminAddUserToGroup", "AdminDisableUser", "AdminDeleteUser", "ListUsers")]

# Every independent choice a deployer has, in all combinations: each
# bring-your-own part, the JWKS mode (auto, inline with or without a
# document, nat) and the profile.
CHOICES = [
    [{}, EXISTING_NETWORK],
    [{}, EXISTING_DATABASE, {**EXISTING_DATABASE, **EXISTING_MASTER},
     {**EXISTING_DATABASE, **EXISTING_MASTER, **EXISTING_KMS}],
    [{}, EXISTING_IDP],
    [{}, INLINE, INLINE_FETCHED, NAT],
    [extra for _, extra in PROFILES],
]
COMBINATIONS = [
    (overrides, Stack(EXPANDED, overrides))
    for overrides in ({k: v for part in combo for k, v in part.items()}
                      for combo in itertools.product(*CHOICES))
]
# The ones CloudFormation would deploy; the rest are refused by a Rule
# (test_only_an_existing_idp_with_inline_keys_and_no_document_is_refused).
ALL_STACKS = [(o, s) for o, s in COMBINATIONS if not s.rules_hold()]
REFUSED = [(o, s) for o, s in COMBINATIONS if s.rules_hold()]
DEFAULT = Stack(EXPANDED)
# The stack each profile creates with every other parameter left alone.
DEFAULTS = {name: Stack(EXPANDED, extra) for name, extra in PROFILES}


def with_profile(extra, overrides=None):
    """Parameters of one profile plus the test's own."""
    return {**extra, **(overrides or {})}


def master_secret(profile):
    """What names the RDS-managed master secret of the created database."""
    owner = "DbCluster" if profile == "prod" else "DbInstance"
    return {"Fn::GetAtt": [owner, "MasterUserSecret.SecretArn"]}


def writer_host(profile):
    """The created database's writer endpoint, as the migration reaches it."""
    owner = "DbWriter" if profile == "prod" else "DbInstance"
    return {"Fn::GetAtt": [owner, "Endpoint.Address"]}


def pool_jwks_module():
    """PoolJwksFunction's InlineCode, as the template carries it, loaded as
    a module (its functions run here, in-process; nothing reaches the
    network: the tests replace its connection class)."""
    code = RAW["Resources"]["PoolJwksFunction"]["Properties"]["InlineCode"]
    module = types.ModuleType("pool_jwks_index")
    exec(compile(code, "template.yaml#PoolJwksFunction/index.py", "exec"), module.__dict__)
    return module


class TemplateTest(unittest.TestCase):
    # --- item 1: everything created by default ---------------------------------
    def test_default_creates_network_with_endpoints_in_two_azs(self):
        s = DEFAULT
        self.assertIn("Vpc", s.resources)
        azs = [s.props(n)["AvailabilityZone"] for n in ("PrivateSubnetA", "PrivateSubnetB")]
        self.assertEqual({json.dumps(a) for a in azs},
                         {json.dumps({"Fn::Select": [i, {"Fn::GetAZs": ""}]}) for i in (0, 1)})
        endpoints = {s.props(n)["ServiceName"]["Fn::Sub"]: s.props(n)
                     for n in s.of_type("AWS::EC2::VPCEndpoint")}
        for service in ("secretsmanager", "sts", "kms"):
            ep = endpoints[f"com.amazonaws.${{AWS::Region}}.{service}"]
            self.assertEqual(ep["VpcEndpointType"], "Interface")
            self.assertIs(ep["PrivateDnsEnabled"], True)
            self.assertEqual(len(ep["SubnetIds"]), 2)
        s3 = endpoints["com.amazonaws.${AWS::Region}.s3"]
        self.assertEqual(s3["VpcEndpointType"], "Gateway")
        self.assertEqual(s3["RouteTableIds"], [{"Ref": "PrivateRouteTable"}])
        # No Cognito endpoint with nat (prod's auto): its private DNS would
        # capture the JWKS host the API function fetches through the NAT.
        self.assertFalse(any("cognito" in k for k in endpoints))
        self.assertIs(s.props("Vpc")["EnableDnsHostnames"], True)

    def test_default_creates_encrypted_serverless_aurora_with_managed_master(self):
        s = DEFAULT
        c = s.props("DbCluster")
        self.assertEqual(c["Engine"], "aurora-postgresql")
        self.assertIs(c["StorageEncrypted"], True)
        self.assertIs(c["ManageMasterUserPassword"], True)
        self.assertNotIn("MasterUserPassword", c)
        self.assertEqual(c["EngineVersion"], s.params["DbEngineVersion"])
        self.assertEqual(c["ServerlessV2ScalingConfiguration"]["MinCapacity"], 0.5)
        self.assertIs(c["DeletionProtection"], True)
        self.assertIs(Stack(EXPANDED, {"DeletionProtection": "false"})
                      .props("DbCluster")["DeletionProtection"], False)
        self.assertEqual(s.resources["DbCluster"]["DeletionPolicy"], "Snapshot")
        self.assertEqual(s.props("DbWriter")["DBInstanceClass"], "db.serverless")
        self.assertIs(s.props("DbWriter")["PubliclyAccessible"], False)
        self.assertEqual(s.props("DbClusterParameters")["Parameters"]["rds.force_ssl"], "1")

    def test_default_proxy_requires_tls_and_scram_with_the_app_secret(self):
        for profile, s in DEFAULTS.items():
            with self.subTest(profile=profile):
                p = s.props("DbProxy")
                self.assertIs(p["RequireTLS"], True)
                self.assertEqual(p["EngineFamily"], "POSTGRESQL")
                # The API's role and the control plane's, both by SCRAM.
                self.assertEqual([a["SecretArn"] for a in p["Auth"]], [{"Ref": "AppSecret"}, {"Ref": "ControlDbSecret"}])
                for auth in p["Auth"]:
                    self.assertEqual(auth["AuthScheme"], "SECRETS")
                    self.assertEqual(auth["ClientPasswordAuthType"], "POSTGRES_SCRAM_SHA_256")
                    self.assertEqual(auth["IAMAuth"], "DISABLED")
                self.assertEqual(ref_name(p["RoleArn"]), "ProxyRole")
                # Two AZs either way: RDS Proxy needs subnets in two.
                self.assertEqual(p["VpcSubnetIds"], [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}])
                (targets,) = s.of_type("AWS::RDS::DBProxyTargetGroup")
                self.assertEqual(s.props(targets)["DBProxyName"], {"Ref": "DbProxy"})
        targets = DEFAULT.props("DbProxyTargets")
        self.assertEqual(targets["DBClusterIdentifiers"], [{"Ref": "DbCluster"}])
        self.assertNotIn("DBInstanceIdentifiers", targets)

    def test_default_app_secret_is_generated_for_the_app_role_with_masterarn(self):
        for profile, s in DEFAULTS.items():
            with self.subTest(profile=profile):
                gen = s.props("AppSecret")["GenerateSecretString"]
                self.assertEqual(gen["GenerateStringKey"], "password")
                text, values = gen["SecretStringTemplate"]["Fn::Sub"]
                body = json.loads(text.replace("${DbPort}", "5432"))
                self.assertEqual(body["username"], "${AppDbUser}")
                self.assertEqual(body["engine"], "postgres")
                self.assertEqual(set(body), {"engine", "username", "host", "port", "dbname", "masterarn"})
                self.assertEqual(values["MasterArn"], master_secret(profile))
                # The writer the rotation function logs in to.
                owner = "DbCluster" if profile == "prod" else "DbInstance"
                self.assertEqual(values["Host"], {"Fn::GetAtt": [owner, "Endpoint.Address"]})
                self.assertNotIn("password", text)

    def test_default_rotation_is_hosted_multi_user_after_the_schema(self):
        self.assertIn("AWS::SecretsManager-2020-07-23", RAW["Transform"])
        self.assertIn("AWS::Serverless-2016-10-31", RAW["Transform"])
        for profile, s in DEFAULTS.items():
            with self.subTest(profile=profile):
                rot = s.resources["AppSecretRotation"]
                hosted = rot["Properties"]["HostedRotationLambda"]
                self.assertEqual(hosted["RotationType"], "PostgreSQLMultiUser")
                self.assertEqual(hosted["MasterSecretArn"], master_secret(profile))
                self.assertEqual(hosted["VpcSubnetIds"],
                                 {"Fn::Join": [",", [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}]]})
                self.assertEqual(hosted["VpcSecurityGroupIds"], {"Ref": "AdminSecurityGroup"})
                self.assertEqual(rot["Properties"]["RotationRules"]["ScheduleExpression"], "rate(30 days)")
                # The first rotation clones the app role, which the migration creates.
                self.assertIn("SchemaResource", rot["DependsOn"])

    def test_default_user_pool_tenant_attribute_is_immutable_and_not_writable(self):
        for profile, s in DEFAULTS.items():
            with self.subTest(profile=profile):
                (attr,) = [a for a in s.props("UserPool")["Schema"] if a["Name"] == "tenant_id"]
                self.assertIs(attr["Mutable"], False)
                client = s.props("UserPoolClient")
                self.assertNotIn("custom:tenant_id", client["WriteAttributes"])
                self.assertIn("custom:tenant_id", client["ReadAttributes"])
                self.assertIs(s.props("UserPool")["AdminCreateUserConfig"]["AllowAdminCreateUserOnly"], True)

    def test_default_function_verifies_tokens_from_the_created_pool(self):
        issuer = {"Fn::Sub": "https://cognito-idp.${AWS::Region}.${AWS::URLSuffix}/${UserPool}"}
        for profile, extra in PROFILES:
            with self.subTest(profile=profile):
                env = DEFAULTS[profile].env("TenantUsersFunction")
                self.assertEqual(env["JWT_ISSUER"], issuer)
                self.assertEqual(env["JWT_AUDIENCE"], {"Ref": "UserPoolClient"})
                self.assertEqual(env["JWT_ALGORITHMS"], "RS256")
                self.assertEqual(env["TENANT_CLAIM"], "custom:tenant_id")
                self.assertEqual(env["JWT_TOKEN_USE"], "id")
                # An existing IdP need not be Cognito: token_use only when asked for.
                self.assertNotIn("JWT_TOKEN_USE", Stack(EXPANDED, with_profile(extra, EXISTING_IDP))
                                 .env("TenantUsersFunction"))
                self.assertEqual(Stack(EXPANDED, with_profile(extra, {**EXISTING_IDP, "JwtTokenUse": "access"}))
                                 .env("TenantUsersFunction")["JWT_TOKEN_USE"], "access")
                # The keys: the pool's URL (prod, nat) or the pool's set as
                # fetched at deploy time (dev, inline).
                if profile == "prod":
                    self.assertEqual(env["JWT_JWKS_URL"], {"Fn::Sub": issuer["Fn::Sub"] + "/.well-known/jwks.json"})
                    self.assertNotIn("JWT_JWKS", env)
                else:
                    self.assertEqual(env["JWT_JWKS"], FETCHED)
                    self.assertNotIn("JWT_JWKS_URL", env)
                self.assertEqual(env["DB_HOST"], {"Fn::GetAtt": ["DbProxy", "Endpoint"]})
                self.assertEqual(env["DB_SECRET_ARN"], {"Ref": "AppSecret"})
                self.assertEqual(env["DB_SSLMODE"], "verify-full")

    def test_http_api_has_a_jwt_authorizer_on_every_route(self):
        for overrides, s in ((o, st) for o, st in ALL_STACKS if not o.get("JwksMode")):
            body = s.props("Api")["Body"]
            auth = body["components"]["securitySchemes"]["TokenAuthorizer"]["x-amazon-apigateway-authorizer"]
            self.assertEqual(auth["type"], "jwt")
            jwt = auth["jwtConfiguration"]
            if "JwtIssuer" in overrides:
                self.assertEqual(jwt["issuer"], overrides["JwtIssuer"])
                self.assertEqual(jwt["audience"], {"Fn::Split": [",", overrides["JwtAudience"]]})
            else:
                self.assertEqual(jwt["audience"], [{"Ref": "UserPoolClient"}])
                self.assertIn("${UserPool}", jwt["issuer"]["Fn::Sub"])
            self.assertEqual(auth["identitySource"], "$request.header.Authorization")
            for path, methods in body["paths"].items():
                for method, op in methods.items():
                    self.assertEqual(op["security"], [{"TokenAuthorizer": []}], f"{method} {path}")
            self.assertEqual(len([1 for m in body["paths"].values() for _ in m]), 5)

    def test_security_groups_open_only_the_documented_paths(self):
        for profile, s in DEFAULTS.items():
            with self.subTest(profile=profile):
                edges = set()
                for name, r in s.resources.items():
                    p = r.get("Properties", {})
                    if r["Type"] == "AWS::EC2::SecurityGroupEgress":
                        dest = (ref_name(p.get("DestinationSecurityGroupId")) or p.get("CidrIp")
                                or p.get("DestinationPrefixListId"))
                        edges.add(("out", ref_name(p["GroupId"]), dest, p["FromPort"], p["ToPort"]))
                    if r["Type"] == "AWS::EC2::SecurityGroupIngress":
                        self.assertNotIn("CidrIp", p, f"{name} admits addresses, not groups")
                        edges.add(("in", ref_name(p["GroupId"]), ref_name(p["SourceSecurityGroupId"]),
                                   p["FromPort"], p["ToPort"]))
                expected = {
                    ("out", "FunctionSecurityGroup", "ProxySecurityGroup", 5432, 5432),
                    ("in", "ProxySecurityGroup", "FunctionSecurityGroup", 5432, 5432),
                    ("out", "ProxySecurityGroup", "ClusterSecurityGroup", 5432, 5432),
                    ("in", "ClusterSecurityGroup", "ProxySecurityGroup", 5432, 5432),
                    ("out", "AdminSecurityGroup", "ClusterSecurityGroup", 5432, 5432),
                    ("in", "ClusterSecurityGroup", "AdminSecurityGroup", 5432, 5432),
                    ("out", "FunctionSecurityGroup", "EndpointSecurityGroup", 443, 443),
                    ("in", "EndpointSecurityGroup", "FunctionSecurityGroup", 443, 443),
                    ("out", "AdminSecurityGroup", "EndpointSecurityGroup", 443, 443),
                    ("in", "EndpointSecurityGroup", "AdminSecurityGroup", 443, 443),
                    # S3 (the ResponseURL) by its managed prefix list, no wider.
                    ("out", "AdminSecurityGroup", REQUIRED["S3PrefixListId"], 443, 443),
                    # The control plane: the proxy, the endpoints, S3 (exports, receipts).
                    ("out", "ControlSecurityGroup", "ProxySecurityGroup", 5432, 5432),
                    ("in", "ProxySecurityGroup", "ControlSecurityGroup", 5432, 5432),
                    ("out", "ControlSecurityGroup", "EndpointSecurityGroup", 443, 443),
                    ("in", "EndpointSecurityGroup", "ControlSecurityGroup", 443, 443),
                    ("out", "ControlSecurityGroup", REQUIRED["S3PrefixListId"], 443, 443),
                }
                if profile == "prod":
                    # JwksMode auto is nat here: the public JWKS URL, and
                    # Cognito's admin API through the same NAT gateway. (dev's
                    # auto is inline: no way out to the internet at all;
                    # Cognito through its endpoint.)
                    expected.add(("out", "FunctionSecurityGroup", "0.0.0.0/0", 443, 443))
                    expected.add(("out", "ControlSecurityGroup", "0.0.0.0/0", 443, 443))
                self.assertEqual(edges, expected)
                for name in s.of_type("AWS::EC2::SecurityGroup"):
                    # The inline rule only replaces the default allow-all egress.
                    self.assertEqual([e["CidrIp"] for e in s.props(name)["SecurityGroupEgress"]], ["127.0.0.1/32"])
                    self.assertNotIn("SecurityGroupIngress", s.props(name))
                for name in ("FunctionToHttpsExistingNetwork", "FunctionToExistingProxy", "AdminToExistingDatabase",
                             "AdminToHttpsExistingNetwork", "ControlToHttpsExistingNetwork", "ControlToExistingProxy"):
                    self.assertNotIn(name, s.resources)
        for profile, extra in PROFILES:
            self.assertNotIn("FunctionToJwks", Stack(EXPANDED, with_profile(extra, INLINE)).resources)
            self.assertIn("FunctionToJwks", Stack(EXPANDED, with_profile(extra, NAT)).resources)

    def test_existing_network_or_database_opens_ports_without_groups_to_name(self):
        def egress(stack):
            return {(ref_name(p["GroupId"]), p.get("CidrIp"), p["FromPort"])
                    for p in (stack.props(n) for n in stack.of_type("AWS::EC2::SecurityGroupEgress"))}
        for profile, extra in PROFILES:
            with self.subTest(profile=profile):
                net = egress(Stack(EXPANDED, with_profile(extra, {**EXISTING_NETWORK, **INLINE})))
                for group in ("FunctionSecurityGroup", "ControlSecurityGroup"):
                    self.assertIn((group, "0.0.0.0/0", 443), net)
                    self.assertNotIn((group, "EndpointSecurityGroup", 443), net)
                db = Stack(EXPANDED, with_profile(extra, {**EXISTING_DATABASE, **EXISTING_MASTER, **INLINE}))
                self.assertEqual({e for e in egress(db) if e[2] == 5432},
                                 {("FunctionSecurityGroup", "0.0.0.0/0", 5432),
                                  ("ControlSecurityGroup", "0.0.0.0/0", 5432),
                                  ("AdminSecurityGroup", EXISTING_MASTER["DbAdminCidr"], 5432)})
                # Without a master secret nothing runs in the admin group: it stays closed.
                no_master = Stack(EXPANDED, with_profile(extra, {**EXISTING_DATABASE, **INLINE}))
                self.assertFalse([e for e in egress(no_master) if e[0] == "AdminSecurityGroup"])
                for name in db.of_type("AWS::EC2::SecurityGroupIngress"):
                    self.assertNotEqual(ref_name(db.props(name)["GroupId"]), "FunctionSecurityGroup")

    # --- issue 17, item 3: Profile dev, a stack you can afford to try ------------
    def test_profile_is_prod_unless_asked(self):
        spec = RAW["Parameters"]["Profile"]
        self.assertEqual((spec["Default"], spec["AllowedValues"]), ("prod", ["prod", "dev"]))
        # The defaults that follow the profile say so, rather than prod's value.
        self.assertEqual(RAW["Parameters"]["JwksMode"]["Default"], "auto")
        self.assertEqual(RAW["Parameters"]["DeletionProtection"]["Default"], "auto")
        self.assertEqual(DEFAULT.params["Profile"], "prod")

    def test_dev_creates_one_postgres_instance_and_no_aurora(self):
        aurora = {"DbCluster", "DbWriter", "DbClusterParameters", "DbProxyTargets"}
        instance = {"DbInstance", "DbParameters", "DbProxyInstanceTargets"}
        checked = 0
        for overrides, s in ALL_STACKS:
            with self.subTest(overrides=sorted(overrides)):
                created = s.conditions["CreateDatabase"]
                dev = overrides.get("Profile") == "dev"
                self.assertEqual(aurora <= set(s.resources), created and not dev)
                self.assertEqual(instance <= set(s.resources), created and dev)
                self.assertFalse((aurora | instance) & set(s.resources) - (instance if dev else aurora))
                if created and dev:
                    self.assertFalse(s.of_type("AWS::RDS::DBCluster"))
                    (db,) = s.of_type("AWS::RDS::DBInstance")
                    self.assertEqual(db, "DbInstance")
                    checked += 1
        self.assertGreater(checked, 0)

    def test_dev_instance_keeps_the_clusters_security_settings(self):
        prod, dev = DEFAULTS["prod"], DEFAULTS["dev"]
        cluster, db = prod.props("DbCluster"), dev.props("DbInstance")
        self.assertEqual(db["Engine"], "postgres")
        # Graviton, the smallest class; one AZ.
        self.assertEqual(db["DBInstanceClass"], "db.t4g.micro")
        self.assertIs(db["MultiAZ"], False)
        self.assertEqual((db["StorageType"], db["AllocatedStorage"]), ("gp3", "20"))
        # The cluster's engine major version, the same family of parameters.
        major = {"Fn::Select": [0, {"Fn::Split": [".", "16.6"]}]}
        self.assertEqual(db["EngineVersion"], major)
        self.assertEqual(cluster["EngineVersion"], "16.6")
        family = dev.props("DbParameters")["Family"]["Fn::Sub"]
        self.assertEqual(family, ["postgres${Major}", {"Major": major}])
        self.assertEqual(prod.props("DbClusterParameters")["Family"]["Fn::Sub"],
                         ["aurora-postgresql${Major}", {"Major": major}])
        self.assertEqual(dev.props("DbParameters")["Parameters"], prod.props("DbClusterParameters")["Parameters"])
        self.assertEqual(db["DBParameterGroupName"], {"Ref": "DbParameters"})
        # Encrypted with the same key (neither names one: the AWS managed
        # aws/rds key), RDS-managed master password in Secrets Manager with
        # the same KMS key (neither names one), no IAM database auth.
        for key in ("StorageEncrypted", "ManageMasterUserPassword", "MasterUsername", "BackupRetentionPeriod",
                    "CopyTagsToSnapshot", "DBSubnetGroupName", "EnableCloudwatchLogsExports", "Port"):
            self.assertEqual(db[key], cluster[key], key)
        self.assertIs(db["StorageEncrypted"], True)
        self.assertIs(db["ManageMasterUserPassword"], True)
        for absent in ("KmsKeyId", "MasterUserSecret", "MasterUserPassword", "EnableIAMDatabaseAuthentication"):
            self.assertNotIn(absent, db, absent)
            self.assertNotIn(absent, cluster, absent)
        self.assertEqual(db["DBName"], cluster["DatabaseName"])
        self.assertEqual(db["VPCSecurityGroups"], cluster["VpcSecurityGroupIds"])
        self.assertEqual(db["VPCSecurityGroups"], [{"Ref": "ClusterSecurityGroup"}])
        writer = prod.props("DbWriter")
        for key in ("PubliclyAccessible", "AutoMinorVersionUpgrade", "EnablePerformanceInsights"):
            self.assertEqual(db[key], writer[key], key)
        self.assertIs(db["PubliclyAccessible"], False)
        self.assertEqual(dev.resources["DbInstance"]["DeletionPolicy"], "Snapshot")
        self.assertEqual(dev.resources["DbInstance"]["UpdateReplacePolicy"], "Snapshot")

    def test_dev_proxy_targets_the_instance(self):
        dev, prod = DEFAULTS["dev"], DEFAULTS["prod"]
        self.assertNotIn("DbProxyTargets", dev.resources)
        targets = dev.props("DbProxyInstanceTargets")
        self.assertEqual(targets["DBInstanceIdentifiers"], [{"Ref": "DbInstance"}])
        self.assertNotIn("DBClusterIdentifiers", targets)
        self.assertEqual(targets["DBProxyName"], {"Ref": "DbProxy"})
        cluster_targets = prod.props("DbProxyTargets")
        for key in ("TargetGroupName", "ConnectionPoolConfigurationInfo"):
            self.assertEqual(targets[key], cluster_targets[key], key)
        # The proxy itself is prod's: TLS, SCRAM, the app secret, two AZs.
        self.assertEqual(dev.props("DbProxy"), prod.props("DbProxy"))
        # And the API function still connects to the proxy, never the instance.
        self.assertEqual(dev.env("TenantUsersFunction")["DB_HOST"], {"Fn::GetAtt": ["DbProxy", "Endpoint"]})
        self.assertFalse(mentions(dev.props("TenantUsersFunction"), "DbInstance"))

    def test_dev_puts_the_interface_endpoints_in_one_subnet(self):
        for profile, s in DEFAULTS.items():
            with self.subTest(profile=profile):
                interface = [n for n in s.of_type("AWS::EC2::VPCEndpoint")
                             if s.props(n)["VpcEndpointType"] == "Interface"]
                # Cognito's only with inline keys (dev's auto): see CognitoEndpoint.
                expected = ["KmsEndpoint", "SecretsManagerEndpoint", "StsEndpoint"]
                if profile == "dev":
                    expected = ["CognitoEndpoint", *expected]
                self.assertEqual(sorted(interface), expected)
                for name in interface:
                    subnets = s.props(name)["SubnetIds"]
                    if profile == "dev":
                        self.assertEqual(subnets, [{"Ref": "PrivateSubnetA"}], name)
                    else:
                        self.assertEqual(subnets, [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}], name)
                    self.assertIs(s.props(name)["PrivateDnsEnabled"], True)
                # Everything else still spans both subnets (RDS and RDS Proxy need two AZs).
                both = [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}]
                self.assertEqual(s.props("DbSubnetGroup")["SubnetIds"], both)
                self.assertEqual(s.props("DbProxy")["VpcSubnetIds"], both)
                for fn in ("TenantUsersFunction", "MigrateFunction", "ControlFunction"):
                    self.assertEqual(s.props(fn)["VpcConfig"]["SubnetIds"], both, fn)
                self.assertEqual(s.props("S3Endpoint")["RouteTableIds"], [{"Ref": "PrivateRouteTable"}])

    def test_deletion_protection_is_off_in_dev_and_on_in_prod(self):
        def protection(overrides):
            s = Stack(EXPANDED, overrides)
            db = s.props("DbCluster" if "DbCluster" in s.resources else "DbInstance")
            return db["DeletionProtection"], s.props("UserPool")["DeletionProtection"]
        self.assertEqual(protection({}), (True, "ACTIVE"))
        self.assertEqual(protection(DEV), (False, "INACTIVE"))
        # Said explicitly, it holds whatever the profile.
        self.assertEqual(protection({**DEV, "DeletionProtection": "true"}), (True, "ACTIVE"))
        self.assertEqual(protection({"DeletionProtection": "false"}), (False, "INACTIVE"))
        self.assertEqual(protection({"DeletionProtection": "auto"}), (True, "ACTIVE"))
        self.assertEqual(protection({**DEV, "DeletionProtection": "auto"}), (False, "INACTIVE"))

    def test_dev_takes_inline_jwks_by_default_and_needs_no_internet(self):
        dev = DEFAULTS["dev"]
        self.assertIs(dev.conditions["InlineJwks"], True)
        self.assertIs(DEFAULT.conditions["InlineJwks"], False)
        env = dev.env("TenantUsersFunction")
        self.assertEqual(env["JWT_JWKS"], FETCHED)
        self.assertNotIn("JWT_JWKS_URL", env)
        # No NAT gateway, internet gateway, public subnet or default route;
        # no group opens 443 to the internet.
        for kind in ("AWS::EC2::NatGateway", "AWS::EC2::InternetGateway", "AWS::EC2::EIP", "AWS::EC2::Route"):
            self.assertFalse(dev.of_type(kind), kind)
        self.assertNotIn("PublicSubnet", dev.resources)
        self.assertFalse([n for n in dev.of_type("AWS::EC2::SecurityGroupEgress")
                          if dev.props(n).get("CidrIp") == "0.0.0.0/0"])
        # auto means inline, and the created pool's keys are fetched at
        # deploy time: one deploy, nothing else to give ...
        self.assertEqual(Stack(EXPANDED, {"Profile": "dev"}).rules_hold(), [])
        self.assertNotIn("JwksMode nat", RAW["Rules"]["InlineNeedsDocument"]["Assertions"][0]["AssertDescription"])
        # ... and nat is still there for whoever asks for it.
        nat = Stack(EXPANDED, {"Profile": "dev", **NAT})
        self.assertEqual(nat.rules_hold(), [])
        self.assertEqual(ref_name(nat.props("PrivateDefaultRoute")["NatGatewayId"]), "NatGateway")
        self.assertIn("JWT_JWKS_URL", nat.env("TenantUsersFunction"))

    def test_bring_your_own_database_is_unaffected_by_profile(self):
        """With DbSecretArn the stack creates no database: prod and dev
        differ only in where the interface endpoints are (a created
        network), once the choices that follow the profile (JwksMode,
        DeletionProtection) are given explicitly."""
        byo = [EXISTING_DATABASE, {**EXISTING_DATABASE, **EXISTING_MASTER},
               {**EXISTING_DATABASE, **EXISTING_MASTER, **EXISTING_KMS}]
        endpoints = {"SecretsManagerEndpoint", "StsEndpoint", "KmsEndpoint", "CognitoEndpoint"}
        compared = 0
        for net, db, idp, jwks in itertools.product([{}, EXISTING_NETWORK], byo, [{}, EXISTING_IDP], [INLINE, NAT]):
            overrides = {**net, **db, **idp, **jwks, "DeletionProtection": "true"}
            prod = Stack(EXPANDED, overrides)
            dev = Stack(EXPANDED, {**overrides, "Profile": "dev"})
            with self.subTest(overrides=sorted(overrides)):
                self.assertEqual(set(prod.resources), set(dev.resources))
                for name in prod.resources:
                    a, b = prod.resources[name], dev.resources[name]
                    if name in endpoints:
                        a, b = copy.deepcopy(a), copy.deepcopy(b)
                        del a["Properties"]["SubnetIds"], b["Properties"]["SubnetIds"]
                    self.assertEqual(a, b, name)
                self.assertEqual(prod.rules_hold(), dev.rules_hold())
                compared += 1
        self.assertEqual(compared, 24)

    # --- item 1: bring your own, each independently ---------------------------
    def test_existing_network_switches_off_vpc_endpoints_and_nat(self):
        for profile, extra in PROFILES:
            with self.subTest(profile=profile):
                s = Stack(EXPANDED, with_profile(extra, EXISTING_NETWORK))
                for gone in ("Vpc", "PrivateSubnetA", "PrivateSubnetB", "SecretsManagerEndpoint",
                             "StsEndpoint", "S3Endpoint", "NatGateway", "InternetGateway", "PublicSubnet"):
                    self.assertNotIn(gone, s.resources)
                vpc = s.props("TenantUsersFunction")["VpcConfig"]
                self.assertEqual(vpc["SubnetIds"], ["subnet-0a", "subnet-0b"])
                groups = vpc["SecurityGroupIds"]["Fn::Split"][1]["Fn::Join"][1]
                self.assertEqual(groups[0], {"Ref": "FunctionSecurityGroup"})
                self.assertEqual(groups[1], {"Fn::Join": [",", ["sg-0proxyclient"]]})
                self.assertEqual(s.props("FunctionSecurityGroup")["VpcId"], "vpc-0abc")
                self.assertEqual(s.props("DbSubnetGroup")["SubnetIds"], ["subnet-0a", "subnet-0b"])
                self.assertEqual(s.props("DbProxy")["VpcSubnetIds"], ["subnet-0a", "subnet-0b"])
                self.assertEqual(s.props("AppSecretRotation")["HostedRotationLambda"]["VpcSubnetIds"],
                                 {"Fn::Join": [",", ["subnet-0a", "subnet-0b"]]})
                self.assertEqual(s.rules_hold(), [])
                self.assertEqual(Stack(EXPANDED, with_profile(extra, {"VpcId": "vpc-0abc"})).rules_hold(),
                                 ["VpcGivenWithSubnets", "MigrationInExistingNetworkNeedsHttpsCidr"])

    def test_existing_database_switches_off_aurora_proxy_secret_and_migration(self):
        for profile, extra in PROFILES:
            with self.subTest(profile=profile):
                s = Stack(EXPANDED, with_profile(extra, EXISTING_DATABASE))
                for gone in ("DbCluster", "DbWriter", "DbClusterParameters", "DbInstance", "DbParameters",
                             "DbSubnetGroup", "DbProxy", "DbProxyTargets", "DbProxyInstanceTargets",
                             "AppSecret", "AppSecretPolicy", "AppSecretRotation", "ProxyRole",
                             "ClusterSecurityGroup", "ProxySecurityGroup", "MigrateFunction", "MigrateRole",
                             "SchemaResource", "MigrateFunctionAliaslive", "ControlDbSecret",
                             "ControlSecretPolicy", "ControlSecretRotation", "ControlToProxy", "ProxyFromControl"):
                    self.assertNotIn(gone, s.resources)
                self.assertFalse(s.of_type("AWS::Lambda::Version"))
                self.assertFalse([n for n, r in s.resources.items() if r["Type"].startswith("AWS::RDS::")])
                env = s.env("TenantUsersFunction")
                self.assertEqual(env["DB_SECRET_ARN"], EXISTING_DATABASE["DbSecretArn"])
                self.assertEqual(env["DB_HOST"], EXISTING_DATABASE["DbProxyEndpoint"])
                self.assertEqual(s.rules_hold(), [])
                # The control plane still runs: as the control role, on the
                # deployer's secret and proxy.
                control = s.env("ControlFunction")
                self.assertEqual(control["DB_SECRET_ARN"], EXISTING_DATABASE["ControlDbSecretArn"])
                self.assertEqual(control["DB_HOST"], EXISTING_DATABASE["DbProxyEndpoint"])
                self.assertEqual(Stack(EXPANDED, with_profile(extra, {"DbSecretArn": EXISTING_DATABASE["DbSecretArn"]}))
                                 .rules_hold(), ["ExistingDatabaseIsComplete", "ExistingDatabaseNamesControlSecret"])
                no_control = {k: v for k, v in EXISTING_DATABASE.items() if k != "ControlDbSecretArn"}
                self.assertEqual(Stack(EXPANDED, with_profile(extra, no_control)).rules_hold(),
                                 ["ExistingDatabaseNamesControlSecret"])
                # And the created database has the stack's own: a given one is refused.
                self.assertEqual(Stack(EXPANDED, with_profile(extra, {
                    "ControlDbSecretArn": EXISTING_DATABASE["ControlDbSecretArn"]})).rules_hold(),
                    ["ControlSecretOnlyWithExistingDatabase"])

    def test_existing_database_with_master_secret_still_migrates(self):
        for profile, extra in PROFILES:
            with self.subTest(profile=profile):
                s = Stack(EXPANDED, with_profile(extra, {**EXISTING_DATABASE, **EXISTING_MASTER}))
                self.assertNotIn("DbCluster", s.resources)
                self.assertNotIn("DbInstance", s.resources)
                cr = s.props("SchemaResource")
                self.assertEqual(cr["MasterSecretArn"], EXISTING_MASTER["DbMasterSecretArn"])
                self.assertEqual(cr["AppSecretArn"], EXISTING_DATABASE["DbSecretArn"])
                self.assertEqual(cr["DbHost"], EXISTING_MASTER["DbAdminHost"])
                (st,) = [st for owner, st in s.statements() if owner == "MigrateRole"]
                self.assertEqual(st["Resource"],
                                 [EXISTING_MASTER["DbMasterSecretArn"], EXISTING_DATABASE["DbSecretArn"],
                                  EXISTING_DATABASE["ControlDbSecretArn"]])
                self.assertEqual(cr["ControlSecretArn"], EXISTING_DATABASE["ControlDbSecretArn"])
                no_host = Stack(EXPANDED, with_profile(
                    extra, {**EXISTING_DATABASE, "DbMasterSecretArn": EXISTING_MASTER["DbMasterSecretArn"]}))
                self.assertEqual(no_host.props("SchemaResource")["DbHost"], EXISTING_DATABASE["DbProxyEndpoint"])

    def test_existing_idp_switches_off_cognito(self):
        for profile, extra in PROFILES:
            with self.subTest(profile=profile):
                # dev's auto is inline: an existing IdP's keys must be given.
                s = Stack(EXPANDED, with_profile(extra, {**EXISTING_IDP, "JwksDocument": DOCUMENT}))
                self.assertNotIn("UserPool", s.resources)
                self.assertNotIn("UserPoolClient", s.resources)
                env = s.env("TenantUsersFunction")
                self.assertEqual(env["JWT_ISSUER"], EXISTING_IDP["JwtIssuer"])
                self.assertEqual(env["JWT_AUDIENCE"], EXISTING_IDP["JwtAudience"])
                self.assertEqual(s.rules_hold(), [])
                nat = Stack(EXPANDED, with_profile(extra, {**EXISTING_IDP, **NAT}))
                self.assertEqual(nat.env("TenantUsersFunction")["JWT_JWKS_URL"], EXISTING_IDP["JwtJwksUrl"])
                partial = Stack(EXPANDED, with_profile(extra, {"JwtIssuer": EXISTING_IDP["JwtIssuer"], **NAT}))
                self.assertEqual(sorted(partial.rules_hold()), ["ExistingIdpIsComplete", "ExistingIdpNatNeedsUrl"])
        # JwksMode auto: the URL with prod (nat), the document with dev (inline).
        self.assertEqual(Stack(EXPANDED, EXISTING_IDP).env("TenantUsersFunction")["JWT_JWKS_URL"],
                         EXISTING_IDP["JwtJwksUrl"])
        dev = Stack(EXPANDED, {**DEV, **EXISTING_IDP, "JwksDocument": DOCUMENT})
        self.assertEqual(dev.env("TenantUsersFunction")["JWT_JWKS"], DOCUMENT)
        self.assertNotIn("JWT_JWKS_URL", dev.env("TenantUsersFunction"))
        # Nothing is fetched for an IdP the stack does not create.
        self.assertNotIn("PoolJwks", dev.resources)
        self.assertEqual(Stack(EXPANDED, {**DEV, **EXISTING_IDP}).rules_hold(), ["InlineNeedsDocument"])
        self.assertEqual(sorted(Stack(EXPANDED, {"JwtIssuer": EXISTING_IDP["JwtIssuer"]}).rules_hold()),
                         ["ExistingIdpIsComplete", "ExistingIdpNatNeedsUrl"])
        self.assertEqual(sorted(Stack(EXPANDED, {**DEV, "JwtIssuer": EXISTING_IDP["JwtIssuer"]}).rules_hold()),
                         ["ExistingIdpIsComplete", "InlineNeedsDocument"])

    def test_inline_jwks_needs_no_nat_and_no_url(self):
        for profile, extra in PROFILES:
            with self.subTest(profile=profile):
                s = Stack(EXPANDED, with_profile(extra, INLINE))
                for gone in ("NatGateway", "NatAddress", "InternetGateway", "PublicSubnet", "PrivateDefaultRoute"):
                    self.assertNotIn(gone, s.resources)
                env = s.env("TenantUsersFunction")
                self.assertEqual(env["JWT_JWKS"], INLINE["JwksDocument"])
                self.assertNotIn("JWT_JWKS_URL", env)
                # Without a document: the created pool's keys are fetched,
                # an existing IdP's cannot be.
                self.assertEqual(Stack(EXPANDED, {"Profile": profile, **INLINE_FETCHED}).rules_hold(), [])
                self.assertEqual(Stack(EXPANDED, {"Profile": profile, **INLINE_FETCHED, **EXISTING_IDP}).rules_hold(),
                                 ["InlineNeedsDocument"])
                # nat, whatever the profile: a route to the internet for the JWKS URL.
                nat = Stack(EXPANDED, with_profile(extra, NAT))
                self.assertEqual(ref_name(nat.props("PrivateDefaultRoute")["NatGatewayId"]), "NatGateway")
        # Default (auto with prod: nat).
        self.assertEqual(ref_name(DEFAULT.props("PrivateDefaultRoute")["NatGatewayId"]), "NatGateway")

    # --- one deploy for Profile dev: the created pool's keys, fetched -------------
    def test_pool_keys_are_fetched_exactly_for_a_created_pool_inline_without_a_document(self):
        fetcher = {"PoolJwks", "PoolJwksFunction", "PoolJwksRole", "PoolJwksLogs"}
        seen = set()
        for overrides, s in ALL_STACKS:
            created_pool = "JwtIssuer" not in overrides
            mode = overrides.get("JwksMode", "auto")
            inline = mode == "inline" or (mode == "auto" and overrides.get("Profile") == "dev")
            fetched = created_pool and inline and "JwksDocument" not in overrides
            env = s.env("TenantUsersFunction")
            with self.subTest(overrides=sorted(overrides)):
                self.assertEqual(fetcher & set(s.resources), fetcher if fetched else set())
                if fetched:
                    self.assertEqual(env["JWT_JWKS"], FETCHED)
                elif inline:
                    self.assertEqual(env["JWT_JWKS"], overrides["JwksDocument"])
                else:
                    self.assertNotIn("JWT_JWKS", env)
                # The fetched keys replace the NAT gateway, never add to it.
                if fetched:
                    self.assertNotIn("NatGateway", s.resources)
                    self.assertNotIn("JWT_JWKS_URL", env)
            seen.add(fetched)
        self.assertEqual(seen, {True, False})
        # A given document wins, also with the created pool.
        given = Stack(EXPANDED, {**DEV, "JwksDocument": DOCUMENT})
        self.assertFalse(fetcher & set(given.resources))
        self.assertEqual(given.env("TenantUsersFunction")["JWT_JWKS"], DOCUMENT)

    def test_pool_keys_fetcher_runs_outside_the_vpc_with_logs_only(self):
        checked = 0
        for overrides, s in ALL_STACKS:
            if "PoolJwksFunction" not in s.resources:
                continue
            fn = s.props("PoolJwksFunction")
            with self.subTest(overrides=sorted(overrides)):
                self.assertEqual(s.resources["PoolJwksFunction"]["Type"], "AWS::Lambda::Function")
                # Outside the VPC: Lambda's own internet access, no NAT gateway.
                self.assertNotIn("VpcConfig", fn)
                self.assertIn(fn["Runtime"], ("python3.12", "python3.13"))
                self.assertEqual((fn["Handler"], fn["Architectures"]), ("index.handler", ["arm64"]))
                self.assertLessEqual(fn["Timeout"], 60)
                self.assertEqual(fn["Code"], {"ZipFile": RAW["Resources"]["PoolJwksFunction"]["Properties"]["InlineCode"]})
                self.assertEqual(fn["Role"], {"Fn::GetAtt": ["PoolJwksRole", "Arn"]})
                self.assertEqual(fn["LoggingConfig"]["LogGroup"], {"Ref": "PoolJwksLogs"})
                # Its whole configuration: which pool, in which partition.
                self.assertEqual(fn["Environment"]["Variables"], {
                    "POOL_ID": {"Ref": "UserPool"}, "POOL_REGION": {"Ref": "AWS::Region"},
                    "DNS_SUFFIX": {"Ref": "AWS::URLSuffix"}})
                # Its role: writing its own log group, nothing else.
                role = s.props("PoolJwksRole")
                self.assertNotIn("ManagedPolicyArns", role)
                self.assertNotIn("PermissionsBoundary", role)
                (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
                self.assertEqual(trust, {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                                         "Action": "sts:AssumeRole"})
                mine = [st for owner, st in s.statements() if owner == "PoolJwksRole"]
                self.assertEqual(mine, [{"Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                                         "Resource": {"Fn::GetAtt": ["PoolJwksLogs", "Arn"]}}])
                # No other function runs as that role; no policy grants it more.
                users = {n for n, r in s.resources.items() if n != "PoolJwksRole" and mentions(r, "PoolJwksRole")}
                self.assertEqual(users, {"PoolJwksFunction"})
                self.assertEqual(s.props("PoolJwksLogs")["RetentionInDays"], 365)
                # The custom resource names the pool the function's
                # environment names, and nothing else.
                cr = s.resources["PoolJwks"]
                self.assertEqual(cr["Type"], "Custom::TenantUsersPoolJwks")
                self.assertEqual(cr["Properties"], {"ServiceToken": {"Fn::GetAtt": ["PoolJwksFunction", "Arn"]},
                                                    "UserPoolId": fn["Environment"]["Variables"]["POOL_ID"]})
                checked += 1
        self.assertGreater(checked, 0)
        self.assertFalse(EXPANDED["Resources"]["PoolJwksFunction"]["Properties"].get("VpcConfig"))
        # CloudFormation invokes it with the deployer's credentials: no
        # resource policy lets anyone else (a service, an event source) in.
        self.assertFalse([n for n, r in EXPANDED["Resources"].items()
                          if r["Type"] == "AWS::Lambda::Permission" and mentions(r, "PoolJwksFunction")])

    def test_only_an_existing_idp_with_inline_keys_and_no_document_is_refused(self):
        """Profile dev deploys in one go: the rule that made a created pool
        deploy once with nat now fires only where no key set can be had."""
        self.assertTrue(REFUSED)
        for overrides, s in REFUSED:
            mode = overrides.get("JwksMode", "auto")
            with self.subTest(overrides=sorted(overrides)):
                self.assertEqual(s.rules_hold(), ["InlineNeedsDocument"])
                self.assertIn("JwtIssuer", overrides)
                self.assertNotIn("JwksDocument", overrides)
                self.assertTrue(mode == "inline" or (mode == "auto" and overrides.get("Profile") == "dev"))
        for profile, extra in PROFILES:
            with self.subTest(profile=profile):
                self.assertEqual(Stack(EXPANDED, with_profile(extra, INLINE_FETCHED)).rules_hold(), [])
                self.assertEqual(Stack(EXPANDED, with_profile(extra, {**INLINE_FETCHED, **EXISTING_IDP})).rules_hold(),
                                 ["InlineNeedsDocument"])
                self.assertEqual(Stack(EXPANDED, with_profile(extra, {**INLINE, **EXISTING_IDP})).rules_hold(), [])
        # The dev stack of README's one `sam deploy --guided`: every default.
        dev = Stack(EXPANDED, {"Profile": "dev"})
        self.assertEqual(dev.rules_hold(), [])
        self.assertIn("PoolJwks", dev.resources)
        self.assertNotIn("NatGateway", dev.resources)

    def test_api_environment_fits_lambdas_4_kb_with_the_largest_fetched_key_set(self):
        """Lambda refuses more than 4 KB of environment variables (names and
        values together). The fetched document may take MAX_DOCUMENT bytes;
        the rest, with the longest values the created resources can have,
        must fit beside it."""
        limit = pool_jwks_module().MAX_DOCUMENT
        self.assertEqual(limit, 3000)
        # Longest plausible values: ARNs, a proxy endpoint (63-character
        # proxy name), a 128-character app client id; the issuer with the
        # longest region, the China suffix and a 55-character pool id.
        longest = {"Ref": 128, "Fn::GetAtt": 128}
        subs = {"${AWS::Region}": "ap-southeast-2", "${AWS::URLSuffix}": "amazonaws.com.cn", "${UserPool}": "p" * 55}

        def size(value):
            if isinstance(value, dict):
                (fn, arg), = value.items()
                if fn == "Fn::Sub":
                    for name, text in subs.items():
                        arg = arg.replace(name, text)
                    self.assertNotIn("${", arg)
                    return len(arg)
                return longest[fn]
            return len(str(value))

        checked = 0
        for overrides, s in ALL_STACKS:
            if "PoolJwks" not in s.resources:
                continue
            env = s.env("TenantUsersFunction")
            self.assertEqual(env["JWT_JWKS"], FETCHED)
            total = sum(len(k) + (limit if k == "JWT_JWKS" else size(v)) for k, v in env.items())
            with self.subTest(overrides=sorted(overrides)):
                self.assertLessEqual(total, 4096)
            checked += 1
        self.assertGreater(checked, 0)

    def test_every_combination_resolves_and_keeps_the_function(self):
        for overrides, s in ALL_STACKS:
            with self.subTest(overrides=sorted(overrides)):
                self.assertEqual(s.rules_hold(), [])
                env = s.env("TenantUsersFunction")
                for key in ("DB_SECRET_ARN", "DB_SECRET_ROLE_ARN", "DB_HOST", "JWT_ISSUER", "JWT_AUDIENCE"):
                    self.assertIn(key, env)
                self.assertEqual(("JWT_JWKS" in env) + ("JWT_JWKS_URL" in env), 1)
                # Nothing references a resource this combination does not create.
                for name, res in s.resources.items():
                    for dep in as_list(res.get("DependsOn", [])):
                        self.assertIn(dep, s.resources, f"{name} depends on {dep}")
                    for other in EXPANDED["Resources"]:
                        if other not in s.resources and mentions(res, other):
                            self.fail(f"{name} references {other}, absent with {overrides}")

    # --- item 6: least privilege ----------------------------------------------------
    def test_no_wildcard_resource_for_sensitive_services(self):
        for overrides, s in ALL_STACKS:
            for owner, st in s.statements():
                actions = as_list(st["Action"])
                for action in actions:
                    self.assertNotIn("*", action, f"{owner}: wildcard action {action}")
                if not any(a.startswith(SENSITIVE) for a in actions):
                    continue
                for resource in as_list(st["Resource"]):
                    self.assertNotIn("*", json.dumps(resource), f"{owner} {actions} with {overrides}")
                    self.assertNotEqual(resource, "", f"{owner} {actions} names nothing")

    def test_execution_role_may_only_assume_the_reader_which_trusts_only_it(self):
        for _, s in ALL_STACKS:
            mine = [st for owner, st in s.statements() if owner == "ExecutionRole"]
            expected = [{"Effect": "Allow", "Action": "sts:AssumeRole",
                         "Resource": {"Fn::GetAtt": ["SecretReaderRole", "Arn"]}}]
            # With the created pool, the identities of tenant users, in that pool only.
            if s.conditions["CreateIdp"]:
                expected.append({"Effect": "Allow", "Action": IDENTITY_ACTIONS,
                                 "Resource": {"Fn::GetAtt": ["UserPool", "Arn"]}})
            self.assertEqual(sorted(map(json.dumps, mine)), sorted(map(json.dumps, expected)))
            managed = s.props("ExecutionRole")["ManagedPolicyArns"]
            self.assertEqual(managed, [{"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"}])
            (trust,) = s.props("SecretReaderRole")["AssumeRolePolicyDocument"]["Statement"]
            self.assertEqual(trust["Principal"], {"AWS": {"Fn::GetAtt": ["ExecutionRole", "Arn"]}})
            reader = [st for owner, st in s.statements() if owner == "SecretReaderRole"]
            self.assertEqual(reader[0]["Action"], "secretsmanager:GetSecretValue")
            self.assertEqual({st["Action"] for st in reader} - {"secretsmanager:GetSecretValue"},
                             {"kms:Decrypt"} if len(reader) == 2 else set())

    def test_kms_decrypt_only_through_secrets_manager_on_the_named_key(self):
        for profile, extra in PROFILES:
            with self.subTest(profile=profile):
                s = Stack(EXPANDED, with_profile(extra, {**EXISTING_DATABASE, **EXISTING_MASTER, **EXISTING_KMS}))
                kms = [(o, st) for o, st in s.statements() if st["Action"] == "kms:Decrypt"]
                self.assertEqual(sorted(o for o, _ in kms), ["ControlSecretReaderRole", "MigrateRole", "SecretReaderRole"])
                for _, st in kms:
                    self.assertEqual(st["Resource"], EXISTING_KMS["DbSecretKmsKeyArn"])
                    self.assertEqual(st["Condition"]["StringEquals"]["kms:ViaService"],
                                     {"Fn::Sub": "secretsmanager.${AWS::Region}.amazonaws.com"})
                # The created secrets use the AWS managed key: nothing to grant.
                self.assertFalse([st for _, st in DEFAULTS[profile].statements() if st["Action"] == "kms:Decrypt"])

    def test_service_trust_policies_carry_source_conditions(self):
        for profile, s in DEFAULTS.items():
            trust = s.props("ProxyRole")["AssumeRolePolicyDocument"]["Statement"]
            self.assertEqual(trust, [{
                "Effect": "Allow", "Principal": {"Service": "rds.amazonaws.com"}, "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}},
            }], profile)
        for overrides, s in ALL_STACKS:
            for name in s.of_type("AWS::IAM::Role"):
                for st in s.props(name)["AssumeRolePolicyDocument"]["Statement"]:
                    principal = st["Principal"]
                    self.assertNotEqual(principal, "*")
                    self.assertNotEqual(principal.get("AWS"), "*")
                    service = principal.get("Service")
                    # Lambda documents no confused-deputy keys for execution
                    # roles; every other service principal must carry one.
                    if service and service != "lambda.amazonaws.com":
                        self.assertIn("aws:SourceAccount", json.dumps(st.get("Condition")), name)

    def test_app_secret_readable_only_by_reader_proxy_migration_and_rotation(self):
        for profile, s in DEFAULTS.items():
            with self.subTest(profile=profile):
                policy = s.props("AppSecretPolicy")
                self.assertIs(policy["BlockPublicPolicy"], True)
                statements = policy["ResourcePolicy"]["Statement"]
                self.assertTrue(statements)
                for st in statements:
                    self.assertEqual((st["Effect"], st["Principal"], st["Resource"]), ("Deny", "*", "*"), st["Sid"])
                # Every named principal is one of this stack's roles by ARN; no
                # pattern names a role but the one for the rotation function's.
                named = {ref_name(a) for st in statements for op, keys in st["Condition"].items()
                         for a in as_list(keys.get("aws:PrincipalArn", [])) if ref_name(a)}
                self.assertEqual(named, {"SecretReaderRole", "ProxyRole", "MigrateRole"})
                self.assertNotIn("ExecutionRole", json.dumps(statements))
                patterns = {json.dumps(a) for st in statements for op, keys in st["Condition"].items()
                            for a in as_list(keys.get("aws:PrincipalArn", [])) if "Fn::Sub" in json.dumps(a)}
                self.assertEqual(patterns, {
                    json.dumps({"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/${AWS::StackName}-*"}),
                    json.dumps({"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}),
                })
                # The session the rotation function runs as is the name the stack gives it.
                rotation = s.props("AppSecretRotation")["HostedRotationLambda"]["RotationLambdaName"]
                self.assertEqual(rotation, {"Fn::Sub": "${AWS::StackName}-rotation"})
                self.assertIn({"aws:userid": {"Fn::Sub": "*:${AWS::StackName}-rotation"}},
                              [st["Condition"].get("StringNotLike") for st in statements])
                # Identity side: exactly those roles of this stack may read it.
                readers = sorted({owner for owner, st in s.statements()
                                  if "secretsmanager:GetSecretValue" in as_list(st["Action"])
                                  and {"Ref": "AppSecret"} in as_list(st["Resource"])})
                self.assertEqual(readers, ["MigrateRole", "ProxyRole", "SecretReaderRole"])

    # --- issue 16, item 2: the secret's policy, evaluated ---------------------------
    def test_secret_policy_denies_the_execution_role_and_a_probe_role_everything(self):
        """The API's own role (it must go through the reader role) and any
        other role named like this stack's get nothing: not the value, not a
        write, not the policy. Bring-your-own databases have no policy of
        this stack; there, no identity policy of the stack lets those roles
        near the secret either."""
        execution = caller(stack_role("ExecutionRole"), session=f"{STACK_NAME}-TenantUsersFunction-AbCd")
        probes = [caller(role_arn(f"{STACK_NAME}-probe"), session=session, vpc=vpc)
                  for session in ("probe", f"{STACK_NAME}-api") for vpc in (None, CREATED_VPC, "vpc-0other")]
        checked = 0
        for overrides, s in ALL_STACKS:
            if "AppSecretPolicy" not in s.resources:
                self.assertNotIn("AppSecret", s.resources)
                owners = {owner for owner, st in s.statements()
                          if any(a.startswith("secretsmanager:") for a in as_list(st["Action"]))}
                self.assertLessEqual(owners, {"SecretReaderRole", "ControlSecretReaderRole", "MigrateRole"}, overrides)
                continue
            policy = s.props("AppSecretPolicy")["ResourcePolicy"]
            for request in [execution, *probes]:
                for action in SECRET_ACTIONS:
                    with self.subTest(overrides=sorted(overrides), request=request, action=action):
                        self.assertTrue(denied_by(policy, action, request))
                        checked += 1
        self.assertGreater(checked, 0)

    def test_rotation_function_name_alone_is_not_enough_in_a_created_network(self):
        # A role named like the stack's, in a session named like the
        # rotation function (anyone who can assume that role picks the
        # session name), calling from outside the VPC: still refused where
        # the stack made the network.
        impostor = caller(role_arn(f"{STACK_NAME}-probe"), session=ROTATION_FUNCTION, vpc="vpc-0other")
        no_vpc = caller(role_arn(f"{STACK_NAME}-probe"), session=ROTATION_FUNCTION)
        for overrides, s in ALL_STACKS:
            if "AppSecretPolicy" not in s.resources or not s.conditions["CreateNetwork"]:
                continue
            policy = s.props("AppSecretPolicy")["ResourcePolicy"]
            for action in SECRET_ACTIONS:
                self.assertTrue(denied_by(policy, action, impostor), action)
                self.assertTrue(denied_by(policy, action, no_vpc), action)
        # A role of another stack, even with the right session and VPC.
        other = caller(role_arn("other-stack-SomeRole-1"), session=ROTATION_FUNCTION, vpc=CREATED_VPC)
        for action in SECRET_ACTIONS:
            self.assertTrue(denied_by(DEFAULT.props("AppSecretPolicy")["ResourcePolicy"], action, other))

    def test_named_readers_may_read_the_value_and_nothing_else(self):
        readers = [
            caller(stack_role("SecretReaderRole"), session=f"{STACK_NAME}-api", vpc=CREATED_VPC),
            caller(stack_role("SecretReaderRole"), session=ROTATION_FUNCTION),
            caller(stack_role("ProxyRole"), session="rds-proxy-session"),
            caller(stack_role("MigrateRole"), session=f"{STACK_NAME}-MigrateFunction-AbCd", vpc=CREATED_VPC),
            caller(stack_role("MigrateRole"), session=f"{STACK_NAME}-MigrateFunction-AbCd"),
        ]
        for overrides, s in ALL_STACKS:
            if "AppSecretPolicy" not in s.resources:
                continue
            policy = s.props("AppSecretPolicy")["ResourcePolicy"]
            for request in readers:
                with self.subTest(overrides=sorted(overrides), request=request):
                    self.assertEqual(denied_by(policy, "secretsmanager:GetSecretValue", request), [])
                    for action in SECRET_VALUE_WRITE + SECRET_MANAGEMENT:
                        self.assertTrue(denied_by(policy, action, request), action)

    def test_rotation_function_may_read_and_write_the_value_only(self):
        for overrides, s in ALL_STACKS:
            if "AppSecretPolicy" not in s.resources:
                continue
            policy = s.props("AppSecretPolicy")["ResourcePolicy"]
            # In a created network its calls come through the VPC's endpoint;
            # in an existing one they may come through a NAT gateway.
            vpc = CREATED_VPC if s.conditions["CreateNetwork"] else None
            rotation = caller(ROTATION_ROLE, session=ROTATION_FUNCTION, vpc=vpc)
            with self.subTest(overrides=sorted(overrides)):
                for action in SECRET_VALUE_READ + SECRET_VALUE_WRITE:
                    self.assertEqual(denied_by(policy, action, rotation), [], action)
                for action in SECRET_MANAGEMENT:
                    self.assertTrue(denied_by(policy, action, rotation), action)

    def test_cloudformation_can_still_manage_and_delete_the_secret(self):
        """What CloudFormation's handlers call (their registry schemas) for
        the secret, its policy and its rotation schedule, on create, update
        and delete, is not denied to the deployer acting through it. The
        one exception is the value: CloudFormation may not read it (its
        dynamic references would hand it to any stack), which the Secret's
        update handler lists; see README, "Deploy"."""
        needed = (handler_permissions("AWS::SecretsManager::Secret", "create", "update", "delete")
                  | handler_permissions("AWS::SecretsManager::ResourcePolicy", "create", "update", "delete")
                  | handler_permissions("AWS::SecretsManager::RotationSchedule", "create", "update", "delete"))
        self.assertIn("secretsmanager:DeleteSecret", needed)
        self.assertIn("secretsmanager:DeleteResourcePolicy", needed)
        deployer = role_arn("deployer")
        service_role = role_arn("cfn-service-role")
        cases = [
            # Default: the deployer's own credentials, forwarded by CloudFormation.
            ({}, caller(deployer, session="alice", via=["cloudformation.amazonaws.com"]), True),
            ({}, caller(deployer, session="alice"), False),
            # Named: a service role (no aws:CalledVia), or the deployer's role.
            ({"DeployerRoleArn": service_role}, caller(service_role, session="AWSCloudFormation"), True),
            ({"DeployerRoleArn": deployer}, caller(deployer, session="alice", via=["cloudformation.amazonaws.com"]), True),
            # Named: nobody else, not even through CloudFormation.
            ({"DeployerRoleArn": service_role},
             caller(role_arn(f"{STACK_NAME}-probe"), session="x", via=["cloudformation.amazonaws.com"]), False),
            ({"DeployerRoleArn": service_role}, caller(stack_role("ExecutionRole"), session="fn"), False),
        ]
        for (profile, base), (extra, request, manages) in itertools.product(PROFILES, cases):
            policy = Stack(EXPANDED, with_profile(base, extra)).props("AppSecretPolicy")["ResourcePolicy"]
            with self.subTest(profile=profile, extra=extra, request=request):
                if manages:
                    refused = {a for a in needed if denied_by(policy, a, request)}
                    self.assertEqual(refused, {"secretsmanager:GetSecretValue"})
                for action in SECRET_MANAGEMENT:
                    self.assertEqual(not denied_by(policy, action, request), manages, action)
                # Never the value, not even for the deployer.
                for action in SECRET_VALUE_READ + SECRET_VALUE_WRITE:
                    self.assertTrue(denied_by(policy, action, request), action)
        # The account root can always take the policy off again (recovery).
        for (_, base), extra in itertools.product(PROFILES, ({}, {"DeployerRoleArn": service_role})):
            policy = Stack(EXPANDED, with_profile(base, extra)).props("AppSecretPolicy")["ResourcePolicy"]
            root = caller(f"arn:aws:iam::{ACCOUNT}:root")
            self.assertEqual(denied_by(policy, "secretsmanager:DeleteResourcePolicy", root), [])
            self.assertTrue(denied_by(policy, "secretsmanager:GetSecretValue", root))
        pattern = RAW["Parameters"]["DeployerRoleArn"]["AllowedPattern"]
        self.assertRegex(role_arn("aws-reserved/sso.amazonaws.com/eu-west-1/AWSReservedSSO_Admin_0a1b"), pattern)
        self.assertNotRegex(f"arn:aws:iam::{ACCOUNT}:root", pattern)
        self.assertEqual(RAW["Parameters"]["DeployerRoleArn"]["Default"], "")

    # --- item 2: the migration custom resource ------------------------------------
    def test_schema_custom_resource_is_wired_to_the_migrate_function(self):
        for profile, s in DEFAULTS.items():
            with self.subTest(profile=profile):
                cr = s.resources["SchemaResource"]
                self.assertEqual(cr["Type"], "Custom::TenantUsersSchema")
                props = cr["Properties"]
                self.assertEqual(set(props), {"ServiceToken", "MasterSecretArn", "AppSecretArn", "ControlSecretArn",
                                              "DbHost", "DbPort", "DbName", "SchemaVersion", "Tenants"})
                self.assertEqual(props["ControlSecretArn"], {"Ref": "ControlDbSecret"})
                self.assertEqual(props["ServiceToken"], {"Ref": "MigrateFunctionAliaslive"})
                self.assertEqual(s.props("MigrateFunctionAliaslive")["FunctionName"], {"Ref": "MigrateFunction"})
                self.assertEqual(props["MasterSecretArn"], master_secret(profile))
                self.assertEqual(props["AppSecretArn"], {"Ref": "AppSecret"})
                # The writer instance, so the migration waits for it to exist.
                self.assertEqual(props["DbHost"], writer_host(profile))
                self.assertEqual((props["DbPort"], props["DbName"]), (5432, "tenant_users"))
                fn = s.props("MigrateFunction")
                # Its own binary: no handler name or variable says which function it is.
                self.assertEqual(fn["Handler"], "bootstrap")
                self.assertNotIn("TENANT_USERS_ROLE", fn["Environment"]["Variables"])
                self.assertEqual(fn["Runtime"], s.props("TenantUsersFunction")["Runtime"])
                self.assertEqual(fn["VpcConfig"]["SubnetIds"], [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}])
                self.assertEqual(fn["VpcConfig"]["SecurityGroupIds"], [{"Ref": "AdminSecurityGroup"}])
                self.assertGreaterEqual(fn["Timeout"], 120)
                (st,) = [st for owner, st in s.statements() if owner == "MigrateRole"]
                self.assertEqual(st["Action"], "secretsmanager:GetSecretValue")
                self.assertEqual(st["Resource"], [props["MasterSecretArn"], {"Ref": "AppSecret"},
                                                  {"Ref": "ControlDbSecret"}])

    def test_tenants_parameter_reaches_the_schema_resource(self):
        """Until a control plane onboards tenants, the migration registers
        the ones the Tenants parameter lists; the list travels as a property
        of the custom resource (a change re-runs it), not as a target."""
        spec = RAW["Parameters"]["Tenants"]
        self.assertEqual((spec["Type"], spec["Default"]), ("String", ""))
        listed = "acme, globex:premium"
        migrating = [(o, s) for o, s in ALL_STACKS if s.conditions["RunMigration"]]
        self.assertTrue(migrating)
        for overrides, s in migrating:
            with self.subTest(overrides=sorted(overrides)):
                self.assertEqual(s.props("SchemaResource")["Tenants"], "")
                with_list = Stack(EXPANDED, {**overrides, "Tenants": listed})
                self.assertEqual(with_list.rules_hold(), [])
                self.assertEqual(with_list.props("SchemaResource")["Tenants"], listed)
                # Data, not where it works: the environment does not carry it.
                self.assertNotIn(listed, json.dumps(with_list.env("MigrateFunction")))
        # Nothing would register them without the migration: refused.
        self.assertEqual(Stack(EXPANDED, {**EXISTING_DATABASE, "Tenants": "acme"}).rules_hold(),
                         ["TenantsNeedTheMigration"])
        self.assertIn("migrate register", RAW["Rules"]["TenantsNeedTheMigration"]["Assertions"][0]
                      ["AssertDescription"])

    def test_tenants_pattern_takes_entries_in_the_tiers_migrations_create(self):
        spec = RAW["Parameters"]["Tenants"]
        pattern = spec["AllowedPattern"]
        for good in ["", "acme", "acme,globex:premium", " acme , b-2:basic,ops.team_1:unlimited ",
                     "x" * 64, "a:standard", ",".join(f"t{i}" for i in range(500))]:
            self.assertIsNotNone(re.fullmatch(pattern, good), good)
        for bad in ["a b", "acme:gold", "acme:Premium", "acme:", "acme,,globex", "acme,", ",acme",
                    "acme:basic:x", "x" * 65, "acme;globex", ":basic", "acme globex"]:
            self.assertIsNone(re.fullmatch(pattern, bad), bad)
        # Every tier the pattern names (twice: first entry, the others), and
        # none other, is one migrations/ inserts into tenant_tiers.
        named = [set(alt.split("|")) for alt in re.findall(r"\(:\(([a-z0-9|-]+)\)\)", pattern)]
        self.assertEqual(len(named), 2)
        self.assertEqual(named[0], named[1])
        created = set()
        migrations = os.path.join(ROOT, "migrations")
        for name in sorted(os.listdir(migrations)):
            with open(os.path.join(migrations, name)) as f:
                sql = f.read()
            for insert in re.findall(r"INSERT INTO tenant_tiers\b.*?;", sql, re.S | re.I):
                created |= set(re.findall(r"\(\s*'([a-z0-9-]+)'", insert))
        self.assertEqual(named[0], created)
        for tier in created:
            self.assertIn(tier, spec["ConstraintDescription"])
            self.assertIn(tier, spec["Description"])

    def test_each_function_is_built_from_its_own_binary(self):
        """One cargo package, one binary per function (src/bin/<name>.rs):
        the SAM CLI picks it from Metadata.BuildProperties.Binary (a Binary
        key beside BuildMethod is not read), and Lambda runs it as bootstrap."""
        functions = {name: res for name, res in RAW["Resources"].items()
                     if res["Type"] == "AWS::Serverless::Function" and "InlineCode" not in res["Properties"]}
        binaries = {name: res["Metadata"]["BuildProperties"]["Binary"] for name, res in functions.items()}
        self.assertEqual(binaries, {"TenantUsersFunction": "api", "MigrateFunction": "migrate",
                                    "ControlFunction": "control"})
        for name, res in functions.items():
            self.assertEqual(res["Metadata"]["BuildMethod"], "rust-cargolambda", name)
            self.assertNotIn("Binary", res["Metadata"], name)
            self.assertEqual(res["Properties"]["Handler"], "bootstrap", name)
            self.assertNotIn("TENANT_USERS_ROLE", json.dumps(res), name)

    def test_schema_version_changes_with_code_and_role_name(self):
        _, other_code = expand("s3://bucket/tenant-users-next.zip")
        for profile, extra in PROFILES:
            def version(template, overrides=None):
                return Stack(template, with_profile(extra, overrides)).props("SchemaResource")["SchemaVersion"]
            with self.subTest(profile=profile):
                first = version(EXPANDED)
                self.assertEqual(version(EXPANDED), first)
                self.assertNotEqual(version(other_code), first)
                self.assertNotEqual(version(EXPANDED, {"AppDbUser": "other_app"}), first)
                (versioned,) = [ref_name(x) for x in first["Fn::Join"][1] if ref_name(x)]
                self.assertEqual(EXPANDED["Resources"][versioned]["Type"], "AWS::Lambda::Version")


    # --- issue 16, item 1: the migration trusts nothing it is sent -------------------
    def test_migrate_function_environment_names_its_database_and_secrets(self):
        pairs = {"DB_HOST": "DbHost", "DB_PORT": "DbPort", "DB_NAME": "DbName",
                 "DB_MASTER_SECRET_ARN": "MasterSecretArn", "DB_APP_SECRET_ARN": "AppSecretArn",
                 "DB_CONTROL_SECRET_ARN": "ControlSecretArn"}
        checked = 0
        for overrides, s in ALL_STACKS:
            if "MigrateFunction" not in s.resources:
                continue
            env = s.env("MigrateFunction")
            props = s.props("SchemaResource")
            with self.subTest(overrides=sorted(overrides)):
                for var, prop in pairs.items():
                    self.assertEqual(env[var], props[prop], var)
                    self.assertNotIn(env[var], ("", None), var)
                self.assertEqual(env["DB_SSLMODE"], "verify-full")
                checked += 1
        self.assertEqual(checked, len([1 for _, s in ALL_STACKS if s.conditions["RunMigration"]]))
        # The one mode there is: require (any certificate) is gone.
        spec = RAW["Parameters"]["AdminDbSslMode"]
        self.assertEqual((spec["Default"], spec["AllowedValues"]), ("verify-full", ["verify-full"]))
        # The event still carries them, so that a change re-runs the resource.
        self.assertLessEqual(set(pairs.values()), set(DEFAULT.props("SchemaResource")))

    def test_admin_security_group_reaches_no_address_but_db_endpoints_and_s3(self):
        """The migration and rotation functions' group (it holds the master
        password's reader): the database port to the database, 443 to the
        Secrets Manager endpoint and S3's prefix list, nothing to 0.0.0.0/0
        or ::/0 in any combination."""
        for overrides, s in ALL_STACKS:
            admin = s.props("AdminSecurityGroup")
            rules = [dict(r) for r in admin["SecurityGroupEgress"]]
            rules += [s.props(n) for n in s.of_type("AWS::EC2::SecurityGroupEgress")
                      if ref_name(s.props(n)["GroupId"]) == "AdminSecurityGroup"]
            with self.subTest(overrides=sorted(overrides)):
                for rule in rules:
                    self.assertNotIn(rule.get("CidrIp"), ("0.0.0.0/0",), rule)
                    self.assertNotIn(rule.get("CidrIpv6"), ("::/0",), rule)
                dests = {(r.get("CidrIp") or r.get("DestinationPrefixListId")
                          or ref_name(r.get("DestinationSecurityGroupId")), r.get("FromPort"))
                         for r in rules if r.get("CidrIp") != "127.0.0.1/32"}
                expected = set()
                if s.conditions["RunMigration"]:
                    expected.add((REQUIRED["S3PrefixListId"], 443))
                    expected.add(("EndpointSecurityGroup", 443) if s.conditions["CreateNetwork"]
                                 else (EXISTING_NETWORK["AdminHttpsCidr"], 443))
                    expected.add(("ClusterSecurityGroup", 5432) if s.conditions["CreateDatabase"]
                                 else (EXISTING_MASTER["DbAdminCidr"], 5432))
                self.assertEqual(dests, expected)
        # Only a deployer who says so opens 443 wider (a NAT gateway).
        nat = Stack(EXPANDED, {**EXISTING_NETWORK, "AdminHttpsCidr": "0.0.0.0/0"})
        self.assertEqual(nat.props("AdminToHttpsExistingNetwork")["CidrIp"], "0.0.0.0/0")

    def test_migration_is_refused_without_its_s3_prefix_list_and_ranges(self):
        self.assertIn("describe-managed-prefix-lists", RAW["Rules"]["S3PrefixListIsRequired"]
                      ["Assertions"][0]["AssertDescription"])
        self.assertIn("describe-managed-prefix-lists", RAW["Parameters"]["S3PrefixListId"]["Description"])
        for profile, extra in PROFILES:
            with self.subTest(profile=profile):
                bare = Stack(EXPANDED, extra, base={})
                self.assertEqual(bare.rules_hold(), ["S3PrefixListIsRequired"])
                # No migration: the control plane still writes to S3 in the
                # created network, through the prefix list ...
                self.assertEqual(Stack(EXPANDED, with_profile(extra, EXISTING_DATABASE), base={}).rules_hold(),
                                 ["S3PrefixListIsRequired"])
                no_migration = Stack(EXPANDED, with_profile(extra, EXISTING_DATABASE))
                self.assertNotIn("AdminToS3", no_migration.resources)
                self.assertEqual(no_migration.props("ControlToS3")["DestinationPrefixListId"],
                                 REQUIRED["S3PrefixListId"])
                # ... and in an existing network it goes where the API function
                # goes (the deployer's routes): no prefix list needed.
                self.assertEqual(Stack(EXPANDED, with_profile(extra, {**EXISTING_NETWORK, **EXISTING_DATABASE}),
                                       base={}).rules_hold(), [])
                no_cidr = {k: v for k, v in EXISTING_MASTER.items() if k != "DbAdminCidr"}
                self.assertEqual(Stack(EXPANDED, with_profile(extra, {**EXISTING_DATABASE, **no_cidr})).rules_hold(),
                                 ["MigrationOfExistingDatabaseNeedsCidr"])
                no_https = {k: v for k, v in EXISTING_NETWORK.items() if k != "AdminHttpsCidr"}
                self.assertEqual(Stack(EXPANDED, with_profile(extra, no_https)).rules_hold(),
                                 ["MigrationInExistingNetworkNeedsHttpsCidr"])
                self.assertEqual(Stack(EXPANDED, with_profile(extra, {**no_https, **EXISTING_DATABASE})).rules_hold(),
                                 [])

    # --- issue 16, item 4: revocable sessions --------------------------------------
    def test_tokens_live_five_minutes_and_refresh_tokens_are_revocable(self):
        for profile, s in DEFAULTS.items():
            with self.subTest(profile=profile):
                client = s.props("UserPoolClient")
                self.assertEqual((client["IdTokenValidity"], client["AccessTokenValidity"]), (5, 5))
                self.assertEqual(client["TokenValidityUnits"]["IdToken"], "minutes")
                self.assertEqual(client["TokenValidityUnits"]["AccessToken"], "minutes")
                self.assertIs(client["EnableTokenRevocation"], True)
                # The window a signed-out or disabled user keeps: lifetime + leeway.
                leeway = int(s.env("TenantUsersFunction")["JWT_LEEWAY_SECONDS"])
                self.assertLessEqual(leeway, 60)
                self.assertLessEqual(client["IdTokenValidity"] * 60 + leeway, 6 * 60)

    def test_password_auth_only_when_the_parameter_turns_it_on(self):
        self.assertEqual(RAW["Parameters"]["AllowPasswordAuth"]["Default"], "false")
        for profile, extra in PROFILES:
            with self.subTest(profile=profile):
                flows = DEFAULTS[profile].props("UserPoolClient")["ExplicitAuthFlows"]
                self.assertEqual(flows, ["ALLOW_USER_SRP_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"])
                on = Stack(EXPANDED, with_profile(extra, {"AllowPasswordAuth": "true"})).props("UserPoolClient")
                self.assertEqual(sorted(on["ExplicitAuthFlows"]), sorted(flows + ["ALLOW_USER_PASSWORD_AUTH"]))

    def test_mfa_parameter_maps_to_the_user_pool(self):
        for (profile, extra), mode in itertools.product(PROFILES, ("OFF", "OPTIONAL", "ON")):
            with self.subTest(profile=profile, mode=mode):
                pool = Stack(EXPANDED, with_profile(extra, {"Mfa": mode})).props("UserPool")
                self.assertEqual(pool["MfaConfiguration"], mode)
                if mode == "OFF":
                    self.assertNotIn("EnabledMfas", pool)
                else:
                    self.assertEqual(pool["EnabledMfas"], ["SOFTWARE_TOKEN_MFA"])
        for s in DEFAULTS.values():
            self.assertEqual(s.props("UserPool")["MfaConfiguration"], RAW["Parameters"]["Mfa"]["Default"])
        self.assertEqual(RAW["Parameters"]["Mfa"]["AllowedValues"], ["OFF", "OPTIONAL", "ON"])

    def test_every_parameter_is_in_a_parameter_group(self):
        grouped = [p for g in RAW["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
                   for p in g["Parameters"]]
        self.assertEqual(sorted(grouped), sorted(RAW["Parameters"]))
        self.assertEqual(len(grouped), len(set(grouped)))


# --- issue 19: the tenant lifecycle control plane ------------------------------
CONTROL_ROUTES = {("post", "/tenants"), ("get", "/tenants/{tenant_id}"), ("patch", "/tenants/{tenant_id}"),
                  ("post", "/tenants/{tenant_id}/export"), ("delete", "/tenants/{tenant_id}")}
CONTROL_ENV = {"DB_SECRET_ARN", "DB_SECRET_ROLE_ARN", "DB_HOST", "DB_PORT", "DB_NAME", "DB_SSLMODE",
               "USER_POOL_ID", "EXPORT_BUCKET", "EXPORT_KEY_ID", "RECEIPT_KEY_ID",
               # the fixtures' own (sam local invoke), empty when deployed
               "DATABASE_URL", "RUST_LOG"}
ROOT_PRINCIPAL = {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}}
# Using a key: none of these may be delegated to the account's IAM policies
# beyond what each key's policy says (operators decrypt exports, and get the
# receipt key's public key or have KMS verify).
KEY_USE = {"kms:Encrypt", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:GenerateDataKey",
           "kms:GenerateDataKeyWithoutPlaintext", "kms:GenerateDataKeyPair", "kms:Sign", "kms:Verify",
           "kms:GetPublicKey", "kms:GenerateMac", "kms:VerifyMac", "kms:CreateGrant"}
ENV_JSON = os.path.join(ROOT, "events", "env.json")


def kms_handler_permissions():
    """What CloudFormation's handlers call on an AWS::KMS::Key (its registry
    schema, as cfn-lint ships it), but CreateKey, which names no key."""
    from cfnlint.schema.manager import PROVIDER_SCHEMA_MANAGER
    schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema("us-east-1", "AWS::KMS::Key").schema
    return {p for h in ("create", "read", "update", "delete") for p in schema["handlers"][h]["permissions"]
            if p != "kms:CreateKey"}


def bucket_denies(policy, action, key, principal_arn, secure=True):
    """The Sids of the bucket policy's Deny statements that match a request
    for `action` on object `key` (None: the bucket) by `principal_arn`."""
    bucket = "arn:aws:s3:::tenant-users-exportbucket-1a2b3c"
    target = bucket if key is None else f"{bucket}/{key}"
    sids = []
    for st in policy["Statement"]:
        assert st["Effect"] == "Deny" and st["Principal"] == "*", st
        if not any(fnmatch.fnmatchcase(action, a) for a in as_list(st["Action"])):
            continue
        resources = []
        for r in as_list(st["Resource"]):
            if r == {"Fn::GetAtt": ["ExportBucket", "Arn"]}:
                resources.append(bucket)
            else:
                text = r["Fn::Sub"]
                assert text.startswith("${ExportBucket.Arn}"), r
                resources.append(bucket + text[len("${ExportBucket.Arn}"):])
        if not any(fnmatch.fnmatchcase(target, r) for r in resources):
            continue
        request = {"aws:PrincipalArn": principal_arn, "aws:SecureTransport": "true" if secure else "false"}
        holds = True
        for op, keys in st.get("Condition", {}).items():
            for k, patterns in keys.items():
                if op == "Bool":
                    holds &= request[k] == patterns
                else:
                    holds &= condition_holds(op, k, concrete(patterns), request)
        if holds:
            sids.append(st["Sid"])
    return sids


class ControlPlaneTest(unittest.TestCase):
    def test_control_api_has_iam_authorization_on_every_route_and_nothing_else(self):
        for overrides, s in ALL_STACKS:
            with self.subTest(overrides=sorted(overrides)):
                body = s.props("ControlApi")["Body"]
                # SigV4 of an IAM principal: API Gateway's IAM authorization.
                self.assertEqual(body["components"]["securitySchemes"], {"AWS_IAM": {
                    "type": "apiKey", "name": "Authorization", "in": "header",
                    "x-amazon-apigateway-authtype": "awsSigv4"}})
                routes = set()
                for path, methods in body["paths"].items():
                    for method, op in methods.items():
                        routes.add((method, path))
                        self.assertEqual(op["security"], [{"AWS_IAM": []}], f"{method} {path}")
                        uri = op["x-amazon-apigateway-integration"]["uri"]["Fn::Sub"]
                        self.assertIn("${ControlFunction.Arn}", uri)
                # The five routes, no $default, no ANY, no proxy path.
                self.assertEqual(routes, CONTROL_ROUTES)
                # The users API stays JWT-only: IAM is not a way in there.
                self.assertNotIn("AWS_IAM", json.dumps(s.props("Api")["Body"]))
                # The users API routes none of them, and no JWT reaches them.
                self.assertFalse(set(s.props("Api")["Body"]["paths"]) & {p for _, p in CONTROL_ROUTES})
                self.assertNotIn("TokenAuthorizer", json.dumps(body))
                # API Gateway may invoke the control function from the control API only.
                perms = [s.props(n) for n in s.of_type("AWS::Lambda::Permission")
                         if s.props(n)["FunctionName"] == {"Ref": "ControlFunction"}]
                self.assertEqual(len(perms), 5)
                for p in perms:
                    self.assertEqual(p["SourceArn"]["Fn::Sub"][1]["__ApiId__"], {"Ref": "ControlApi"})
                # Its access log names the calling IAM principal.
                self.assertIn("$context.identity.userArn",
                              s.props("ControlApiApiGatewayDefaultStage")["AccessLogSettings"]["Format"])

    def test_control_function_is_built_like_the_others_in_the_vpc_with_its_own_group_and_logs(self):
        raw = RAW["Resources"]["ControlFunction"]
        self.assertEqual(raw["Metadata"]["BuildMethod"], RAW["Resources"]["MigrateFunction"]["Metadata"]["BuildMethod"])
        self.assertEqual(raw["Metadata"]["BuildProperties"], {"Binary": "control"})
        self.assertEqual(raw["Properties"]["CodeUri"], RAW["Resources"]["MigrateFunction"]["Properties"]["CodeUri"])
        for overrides, s in ALL_STACKS:
            fn = s.props("ControlFunction")
            with self.subTest(overrides=sorted(overrides)):
                self.assertEqual((fn["Runtime"], fn["Architectures"], fn["Handler"]),
                                 ("provided.al2023", ["arm64"], "bootstrap"))
                self.assertEqual(fn["Role"], {"Fn::GetAtt": ["ControlFunctionRole", "Arn"]})
                self.assertLess(fn["Timeout"], 30)  # API Gateway's integration limit
                vpc = fn["VpcConfig"]
                self.assertEqual(vpc["SubnetIds"], s.props("TenantUsersFunction")["VpcConfig"]["SubnetIds"])
                self.assertIn("ControlSecurityGroup", json.dumps(vpc["SecurityGroupIds"]))
                self.assertNotIn("FunctionSecurityGroup", json.dumps(vpc["SecurityGroupIds"]))
                self.assertEqual(fn["LoggingConfig"]["LogGroup"], {"Ref": "ControlLogs"})
                self.assertEqual(fn["LoggingConfig"]["ApplicationLogLevel"], s.params["LogLevel"])
                self.assertEqual(s.props("ControlLogs")["RetentionInDays"], 365)

    def test_control_environment_is_the_apis_database_with_its_own_secret_and_the_lifecycle_resources(self):
        for overrides, s in ALL_STACKS:
            env, api = s.env("ControlFunction"), s.env("TenantUsersFunction")
            with self.subTest(overrides=sorted(overrides)):
                self.assertEqual(set(env), CONTROL_ENV)
                # The same database, port, name and TLS as the API, through the same proxy ...
                for key in ("DB_HOST", "DB_PORT", "DB_NAME", "DB_SSLMODE"):
                    self.assertEqual(env[key], api[key], key)
                self.assertEqual(env["DB_SSLMODE"], "verify-full")
                # ... as the control role, read through its own reader role.
                created = s.conditions["CreateDatabase"]
                self.assertEqual(env["DB_SECRET_ARN"], {"Ref": "ControlDbSecret"} if created
                                 else EXISTING_DATABASE["ControlDbSecretArn"])
                self.assertNotEqual(env["DB_SECRET_ARN"], api["DB_SECRET_ARN"])
                self.assertEqual(env["DB_SECRET_ROLE_ARN"], {"Fn::GetAtt": ["ControlSecretReaderRole", "Arn"]})
                pool = {"Ref": "UserPool"} if s.conditions["CreateIdp"] else ""
                self.assertEqual(env["USER_POOL_ID"], pool)
                self.assertEqual(api["USER_POOL_ID"], pool)
                self.assertEqual(env["EXPORT_BUCKET"], {"Ref": "ExportBucket"})
                self.assertEqual(env["EXPORT_KEY_ID"], {"Fn::GetAtt": ["ExportKey", "Arn"]})
                self.assertEqual(env["RECEIPT_KEY_ID"], {"Fn::GetAtt": ["ReceiptKey", "Arn"]})
                self.assertEqual((env["DATABASE_URL"], env["RUST_LOG"]), ("", ""))

    def test_env_json_sets_exactly_each_functions_variables(self):
        """`sam local invoke --env-vars` hands a function only what the
        template declares, and a declared variable env.json leaves out keeps
        its deployment value; so each block names the same set."""
        with open(ENV_JSON) as f:
            fixture = json.load(f)
        for function in ("TenantUsersFunction", "ControlFunction"):
            declared = set(RAW["Resources"][function]["Properties"]["Environment"]["Variables"])
            self.assertEqual(set(fixture[function]), declared, function)
        self.assertEqual(set(fixture["ControlFunction"]), CONTROL_ENV)

    def test_control_role_may_do_exactly_its_work_on_its_own_resources(self):
        checked = set()
        for overrides, s in ALL_STACKS:
            mine = [st for owner, st in s.statements() if owner == "ControlFunctionRole"]
            expected = [
                {"Effect": "Allow", "Action": "sts:AssumeRole",
                 "Resource": {"Fn::GetAtt": ["ControlSecretReaderRole", "Arn"]}},
                {"Effect": "Allow", "Action": "s3:PutObject",
                 "Resource": [{"Fn::Sub": "${ExportBucket.Arn}/exports/*"},
                              {"Fn::Sub": "${ExportBucket.Arn}/receipts/*"}]},
                {"Effect": "Allow", "Action": "kms:GenerateDataKey", "Resource": {"Fn::GetAtt": ["ExportKey", "Arn"]},
                 "Condition": {"StringEquals": {"kms:ViaService": {"Fn::Sub": "s3.${AWS::Region}.amazonaws.com"}}}},
                {"Effect": "Allow", "Action": "kms:Sign", "Resource": {"Fn::GetAtt": ["ReceiptKey", "Arn"]}},
                {"Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                 "Resource": {"Fn::GetAtt": ["ControlLogs", "Arn"]}},
            ]
            if s.conditions["CreateIdp"]:
                expected.append({"Effect": "Allow", "Action": IDENTITY_ACTIONS,
                                 "Resource": {"Fn::GetAtt": ["UserPool", "Arn"]}})
            with self.subTest(overrides=sorted(overrides)):
                self.assertEqual(sorted(map(json.dumps, mine)), sorted(map(json.dumps, expected)))
                for st in mine:
                    for action in as_list(st["Action"]):
                        self.assertNotIn("*", action)
                    for resource in as_list(st["Resource"]):
                        text = json.dumps(resource)
                        # The only patterns: the two prefixes of the one bucket.
                        if "*" in text:
                            self.assertRegex(text, r'\$\{ExportBucket\.Arn\}/(exports|receipts)/\*')
                # VPC networking only from AWS's ENI policy (no logs:* on *,
                # unlike AWSLambdaVPCAccessExecutionRole).
                role = s.props("ControlFunctionRole")
                self.assertEqual(role["ManagedPolicyArns"], [{"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AWSLambdaENIManagementAccess"}])
                self.assertNotIn("Policies", role)
                (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
                self.assertEqual(trust["Principal"], {"Service": "lambda.amazonaws.com"})
                # Its reader trusts only it and reads only the control secret.
                (trust,) = s.props("ControlSecretReaderRole")["AssumeRolePolicyDocument"]["Statement"]
                self.assertEqual(trust["Principal"], {"AWS": {"Fn::GetAtt": ["ControlFunctionRole", "Arn"]}})
                reader = [st for owner, st in s.statements() if owner == "ControlSecretReaderRole"]
                self.assertEqual(reader[0]["Action"], "secretsmanager:GetSecretValue")
                self.assertEqual(reader[0]["Resource"], s.env("ControlFunction")["DB_SECRET_ARN"])
                self.assertEqual([st["Action"] for st in reader[1:]],
                                 ["kms:Decrypt"] if s.conditions["ExistingDatabaseWithKmsKey"] else [])
                # Nothing else runs as these roles, and no other policy adds to them.
                for role_name, user in (("ControlFunctionRole", "ControlFunction"),):
                    users = {n for n, r in s.resources.items()
                             if r["Type"] == "AWS::Lambda::Function" and mentions(r, role_name)}
                    self.assertEqual(users, {user})
                policies = {n for n in s.of_type("AWS::IAM::Policy") if mentions(s.props(n)["Roles"], "ControlFunctionRole")}
                self.assertEqual(policies, {"ControlFunctionPolicy"})
            checked.add(s.conditions["CreateIdp"])
        self.assertEqual(checked, {True, False})

    def test_api_role_keeps_identities_in_the_created_pool_only(self):
        for overrides, s in ALL_STACKS:
            cognito = [(o, st) for o, st in s.statements()
                       if any(a.startswith("cognito-idp:") for a in as_list(st["Action"]))]
            with self.subTest(overrides=sorted(overrides)):
                if not s.conditions["CreateIdp"]:
                    self.assertEqual(cognito, [])
                    continue
                self.assertEqual(sorted(o for o, _ in cognito), ["ControlFunctionRole", "ExecutionRole"])
                for _, st in cognito:
                    self.assertEqual((st["Action"], st["Resource"]), (IDENTITY_ACTIONS, {"Fn::GetAtt": ["UserPool", "Arn"]}))
                # The reader role, which the API's execution role assumes, gains nothing.
                self.assertFalse([st for o, st in s.statements() if o == "SecretReaderRole"
                                  and not as_list(st["Action"])[0].startswith(("secretsmanager:", "kms:Decrypt"))])

    def test_tenant_admin_group_is_on_the_created_pool(self):
        for overrides, s in ALL_STACKS:
            with self.subTest(overrides=sorted(overrides)):
                if s.conditions["CreateIdp"]:
                    self.assertEqual(s.props("TenantAdminGroup"), {**s.props("TenantAdminGroup"),
                                                                    "UserPoolId": {"Ref": "UserPool"},
                                                                    "GroupName": "tenant-admin"})
                    self.assertNotIn("RoleArn", s.props("TenantAdminGroup"))
                else:
                    self.assertNotIn("TenantAdminGroup", s.resources)

    def test_export_key_is_symmetric_rotated_and_used_only_through_s3_by_the_control_role(self):
        cfn = kms_handler_permissions()
        for profile, s in DEFAULTS.items():
            with self.subTest(profile=profile):
                key = s.resources["ExportKey"]
                self.assertEqual((key["DeletionPolicy"], key["UpdateReplacePolicy"]), ("Retain", "Retain"))
                p = key["Properties"]
                self.assertEqual((p["KeySpec"], p["KeyUsage"], p["EnableKeyRotation"]),
                                 ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", True))
                admin, use = p["KeyPolicy"]["Statement"]
                self.assertEqual((admin["Principal"], admin["Resource"]), (ROOT_PRINCIPAL, "*"))
                self.assertLessEqual(cfn, set(admin["Action"]), "CloudFormation must still manage the key")
                self.assertEqual(set(admin["Action"]) & KEY_USE, {"kms:Decrypt"})
                self.assertFalse([a for a in admin["Action"] if "*" in a])
                self.assertEqual(use["Principal"], {"AWS": {"Fn::GetAtt": ["ControlFunctionRole", "Arn"]}})
                self.assertEqual(use["Action"], "kms:GenerateDataKey")
                self.assertEqual(use["Condition"], {"StringEquals": {"kms:ViaService": {"Fn::Sub": "s3.${AWS::Region}.amazonaws.com"}}})

    def test_receipt_key_signs_ecdsa_p256_for_the_control_role_only_and_anyone_allowed_verifies(self):
        cfn = kms_handler_permissions() - {"kms:EnableKeyRotation", "kms:DisableKeyRotation", "kms:GetKeyRotationStatus"}
        for overrides, s in ALL_STACKS:
            with self.subTest(overrides=sorted(overrides)):
                key = s.resources["ReceiptKey"]
                self.assertEqual((key["DeletionPolicy"], key["UpdateReplacePolicy"]), ("Retain", "Retain"))
                p = key["Properties"]
                self.assertEqual((p["KeySpec"], p["KeyUsage"]), ("ECC_NIST_P256", "SIGN_VERIFY"))
                self.assertNotIn("EnableKeyRotation", p)
                statements = p["KeyPolicy"]["Statement"]
                signers = [st for st in statements if "kms:Sign" in as_list(st["Action"])]
                self.assertEqual(signers, [{
                    "Sid": "OnlyTheControlFunctionSigns", "Effect": "Allow",
                    "Principal": {"AWS": {"Fn::GetAtt": ["ControlFunctionRole", "Arn"]}},
                    "Action": "kms:Sign", "Resource": "*",
                    "Condition": {"StringEquals": {"kms:SigningAlgorithm": "ECDSA_SHA_256"}}}])
                (admin,) = [st for st in statements if st is not signers[0]]
                self.assertEqual(admin["Principal"], ROOT_PRINCIPAL)
                self.assertLessEqual(cfn, set(admin["Action"]))
                self.assertEqual(set(admin["Action"]) & KEY_USE, {"kms:GetPublicKey", "kms:Verify"})
                self.assertFalse([a for a in admin["Action"] if "*" in a])
        out = RAW["Outputs"]["ReceiptKeyArn"]
        self.assertEqual(out["Value"], {"Fn::GetAtt": ["ReceiptKey", "Arn"]})
        self.assertIn("get-public-key", out["Description"])

    def test_export_bucket_is_private_encrypted_versioned_and_keeps_receipts(self):
        for overrides, s in ALL_STACKS:
            with self.subTest(overrides=sorted(overrides)):
                bucket = s.resources["ExportBucket"]
                self.assertEqual((bucket["DeletionPolicy"], bucket["UpdateReplacePolicy"]), ("Retain", "Retain"))
                b = bucket["Properties"]
                (enc,) = b["BucketEncryption"]["ServerSideEncryptionConfiguration"]
                self.assertEqual(enc, {"ServerSideEncryptionByDefault": {
                    "SSEAlgorithm": "aws:kms", "KMSMasterKeyID": {"Fn::GetAtt": ["ExportKey", "Arn"]}},
                    "BucketKeyEnabled": True})
                self.assertEqual(b["PublicAccessBlockConfiguration"], {k: True for k in (
                    "BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")})
                self.assertEqual(b["VersioningConfiguration"], {"Status": "Enabled"})
                self.assertEqual(b["OwnershipControls"], {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]})
                # Only exports expire; receipts never do.
                expiring = [r for r in b["LifecycleConfiguration"]["Rules"]
                            if "ExpirationInDays" in r or "NoncurrentVersionExpiration" in r]
                self.assertEqual([r["Prefix"] for r in expiring], ["exports/"])
                self.assertEqual(expiring[0]["ExpirationInDays"], 30)
                # Object Lock is not used (README and the template say why).
                self.assertNotIn("ObjectLockEnabled", b)
                policy = s.props("ExportBucketPolicy")
                self.assertEqual(policy["Bucket"], {"Ref": "ExportBucket"})
                doc = policy["PolicyDocument"]
                control = stack_role("ControlFunctionRole")
                operator = role_arn("operator")
                root = f"arn:aws:iam::{ACCOUNT}:root"
                # TLS only, for everyone, on the bucket and every object.
                for key in (None, "exports/acme/1/users.jsonl", "receipts/acme/r.json"):
                    for who in (control, operator, root):
                        self.assertEqual(bucket_denies(doc, "s3:GetObject", key, who, secure=False), ["TlsOnly"])
                # A receipt or any of its versions: nobody deletes it but the account root.
                for action in ("s3:DeleteObject", "s3:DeleteObjectVersion"):
                    for who in (control, operator, stack_role("ExecutionRole")):
                        self.assertEqual(bucket_denies(doc, action, "receipts/acme/r.json", who), ["ReceiptsAreKept"])
                    self.assertEqual(bucket_denies(doc, action, "receipts/acme/r.json", root), [])
                    # Exports may go (an operator, after handing them over; the lifecycle rule).
                    self.assertEqual(bucket_denies(doc, action, "exports/acme/1/users.jsonl", operator), [])
                self.assertEqual(bucket_denies(doc, "s3:PutObject", "receipts/acme/r.json", control), [])

    def test_endpoints_for_the_new_calls_in_the_created_network(self):
        seen = set()
        for overrides, s in ALL_STACKS:
            created = s.conditions["CreateNetwork"]
            cognito = created and s.conditions["CreateIdp"] and s.conditions["InlineJwks"]
            with self.subTest(overrides=sorted(overrides)):
                self.assertEqual("KmsEndpoint" in s.resources, created)
                self.assertEqual("CognitoEndpoint" in s.resources, cognito)
                for name in ("KmsEndpoint", "CognitoEndpoint"):
                    if name in s.resources:
                        ep = s.props(name)
                        self.assertEqual((ep["VpcEndpointType"], ep["PrivateDnsEnabled"]), ("Interface", True))
                        self.assertEqual(ep["SecurityGroupIds"], [{"Ref": "EndpointSecurityGroup"}])
                        self.assertEqual(ep["SubnetIds"], s.props("SecretsManagerEndpoint")["SubnetIds"])
                if created:
                    # S3 through the gateway endpoint: the control group's S3 rule is its prefix list.
                    self.assertEqual(s.props("ControlToS3")["DestinationPrefixListId"], REQUIRED["S3PrefixListId"])
                    # Cognito with nat: the NAT gateway, which the API function already reaches.
                    self.assertEqual("ControlToCognitoNat" in s.resources,
                                     s.conditions["CreateIdp"] and not s.conditions["InlineJwks"])
                    if "ControlToCognitoNat" in s.resources:
                        self.assertIn("NatGateway", s.resources)
                        self.assertIn("FunctionToJwks", s.resources)
                # Whatever the mode, a function that fetches the JWKS URL from
                # inside the VPC never shares it with a Cognito endpoint's DNS.
                if "JWT_JWKS_URL" in s.env("TenantUsersFunction"):
                    self.assertNotIn("CognitoEndpoint", s.resources)
            seen.add(cognito)
        self.assertEqual(seen, {True, False})

    def test_control_secret_is_made_and_guarded_like_the_app_secret(self):
        for profile, s in DEFAULTS.items():
            with self.subTest(profile=profile):
                gen = s.props("ControlDbSecret")["GenerateSecretString"]
                app = s.props("AppSecret")["GenerateSecretString"]
                text, values = gen["SecretStringTemplate"]["Fn::Sub"]
                self.assertEqual(text, app["SecretStringTemplate"]["Fn::Sub"][0].replace("${AppDbUser}", "${ControlDbUser}"))
                self.assertEqual(values, app["SecretStringTemplate"]["Fn::Sub"][1])
                for key in ("GenerateStringKey", "PasswordLength", "ExcludeCharacters"):
                    self.assertEqual(gen[key], app[key], key)
                self.assertNotIn("KmsKeyId", s.props("ControlDbSecret"))
                rot = s.resources["ControlSecretRotation"]
                self.assertIn("SchemaResource", rot["DependsOn"])
                hosted = rot["Properties"]["HostedRotationLambda"]
                app_hosted = s.props("AppSecretRotation")["HostedRotationLambda"]
                self.assertEqual(hosted["RotationLambdaName"], {"Fn::Sub": "${AWS::StackName}-control-rotation"})
                self.assertEqual({k: v for k, v in hosted.items() if k != "RotationLambdaName"},
                                 {k: v for k, v in app_hosted.items() if k != "RotationLambdaName"})
                self.assertEqual(rot["Properties"]["RotationRules"], s.props("AppSecretRotation")["RotationRules"])
                # The same policy, naming the control plane's reader and rotation function.
                policy = json.dumps(s.props("ControlSecretPolicy"))
                expected = (json.dumps(s.props("AppSecretPolicy")).replace("AppSecret", "ControlDbSecret")
                            .replace("SecretReaderRole", "ControlSecretReaderRole")
                            .replace("-rotation", "-control-rotation"))
                self.assertEqual(policy, expected)
                # Identity side: exactly these roles may read it.
                readers = sorted({owner for owner, st in s.statements()
                                  if "secretsmanager:GetSecretValue" in as_list(st["Action"])
                                  and {"Ref": "ControlDbSecret"} in as_list(st["Resource"])})
                self.assertEqual(readers, ["ControlSecretReaderRole", "MigrateRole", "ProxyRole"])
                # The migration's environment names the role and its secret.
                env = s.env("MigrateFunction")
                self.assertEqual(env["CONTROL_DB_USER"], "tenant_control")
                self.assertEqual(env["DB_CONTROL_SECRET_ARN"], {"Ref": "ControlDbSecret"})

    def test_neither_function_reads_the_others_database_secret(self):
        api = [caller(stack_role(r), session=f"{STACK_NAME}-api") for r in ("SecretReaderRole", "ExecutionRole")]
        control = [caller(stack_role(r), session=f"{STACK_NAME}-control")
                   for r in ("ControlSecretReaderRole", "ControlFunctionRole")]
        app_rotation = caller(ROTATION_ROLE, session=ROTATION_FUNCTION, vpc=CREATED_VPC)
        control_rotation = caller(role_arn(f"{STACK_NAME}-ControlSecretRotat-SecretsManagerRDSPostg-1A2B3C"),
                                  session=f"{STACK_NAME}-control-rotation", vpc=CREATED_VPC)
        checked = 0
        for overrides, s in ALL_STACKS:
            if "ControlSecretPolicy" not in s.resources:
                continue
            app_policy = s.props("AppSecretPolicy")["ResourcePolicy"]
            control_policy = s.props("ControlSecretPolicy")["ResourcePolicy"]
            with self.subTest(overrides=sorted(overrides)):
                for action in SECRET_ACTIONS:
                    for request in control + [control_rotation]:
                        self.assertTrue(denied_by(app_policy, action, request), (action, request))
                    for request in api + [app_rotation]:
                        self.assertTrue(denied_by(control_policy, action, request), (action, request))
                self.assertEqual(denied_by(control_policy, "secretsmanager:GetSecretValue",
                                           caller(stack_role("ControlSecretReaderRole"), session="x", vpc=CREATED_VPC)), [])
                # The control function's own role goes through its reader, as the API's does.
                for action in SECRET_ACTIONS:
                    self.assertTrue(denied_by(control_policy, action, caller(
                        stack_role("ControlFunctionRole"), session=f"{STACK_NAME}-ControlFunction-AbCd",
                        vpc=CREATED_VPC)), action)
                vpc = CREATED_VPC if s.conditions["CreateNetwork"] else None
                rotation = caller(control_rotation["aws:PrincipalArn"], session=f"{STACK_NAME}-control-rotation", vpc=vpc)
                for action in SECRET_VALUE_READ + SECRET_VALUE_WRITE:
                    self.assertEqual(denied_by(control_policy, action, rotation), [], action)
                checked += 1
        self.assertGreater(checked, 0)

    def test_control_openapi_documents_exactly_the_control_routes_signed_with_sigv4(self):
        with open(os.path.join(ROOT, "control-openapi.yaml")) as f:
            spec = yaml_parse(f.read())
        self.assertEqual(spec["openapi"], "3.1.0")
        documented = {(m, p) for p, ops in spec["paths"].items() for m in ops if m != "parameters"}
        self.assertEqual(documented, CONTROL_ROUTES)
        routed = {(e["Properties"]["Method"].lower(), e["Properties"]["Path"])
                  for e in RAW["Resources"]["ControlFunction"]["Properties"]["Events"].values()}
        self.assertEqual(routed, CONTROL_ROUTES)
        scheme = spec["components"]["securitySchemes"]["sigv4"]
        self.assertEqual((scheme["type"], scheme["in"], scheme["name"]), ("apiKey", "header", "Authorization"))
        self.assertEqual(spec["security"], [{"sigv4": []}])
        for path, ops in spec["paths"].items():
            for method, op in ops.items():
                if method == "parameters":
                    continue
                self.assertNotIn("security", op, f"{method} {path} overrides the SigV4 requirement")
                # Refused by API Gateway without a signature; 503 when a dependency is down.
                self.assertLessEqual({"401", "403", "503"}, set(op["responses"]), f"{method} {path}")
        # The users API takes no IAM signature and routes no tenant lifecycle.
        with open(os.path.join(ROOT, "openapi.yaml")) as f:
            users = yaml_parse(f.read())
        self.assertFalse({p for _, p in CONTROL_ROUTES} & set(users["paths"]))

    def test_control_role_name_must_differ_from_the_app_roles(self):
        for profile, extra in PROFILES:
            with self.subTest(profile=profile):
                self.assertEqual(Stack(EXPANDED, with_profile(extra, {"ControlDbUser": "tenant_app"})).rules_hold(),
                                 ["ControlRoleIsNotTheAppRole"])
                self.assertEqual(Stack(EXPANDED, with_profile(extra, {"ControlDbUser": "ops", "AppDbUser": "ops"}))
                                 .rules_hold(), ["ControlRoleIsNotTheAppRole"])
                self.assertEqual(Stack(EXPANDED, with_profile(extra, {"ControlDbUser": "ops"})).rules_hold(), [])
        self.assertEqual(RAW["Parameters"]["ControlDbUser"]["AllowedPattern"],
                         RAW["Parameters"]["AppDbUser"]["AllowedPattern"])

    def test_outputs_name_the_control_api_and_the_lifecycle_resources(self):
        outputs = RAW["Outputs"]
        self.assertEqual(outputs["ControlApiUrl"]["Value"],
                         {"Fn::Sub": "https://${ControlApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}"})
        for name in ("ControlApiArn", "ExportBucketName", "ExportKeyArn", "ReceiptKeyArn", "ControlSecretArn"):
            self.assertIn(name, outputs)


# --- the metering dashboard, held to the EMF record the code writes -------------
TELEMETRY = os.path.join(ROOT, "src", "telemetry.rs")
README = os.path.join(ROOT, "README.md")
# What CloudFormation would put in for the dashboard's ${...}: the log group
# the API function writes to is /aws/lambda/<its physical name>.
FUNCTION_LOG_GROUP = f"/aws/lambda/{STACK_NAME}-TenantUsersFunction-AbCdEf123456"


def rust_format_literal(source, function):
    """The format string of the first format! in `fn function`, as the
    program sees it (escapes and line continuations resolved)."""
    body = source.index(f"fn {function}(")
    start = source.index('"', source.index("format!(", body))
    literal = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S).match(source, start).group(1)
    # A backslash ending a line skips the newline and the next indentation.
    text = re.sub(r"\\\n\s*", "", literal).replace('\\"', '"')
    assert "\\" not in text, f"unexpected escape in {function}'s format string: {text}"
    return text


def render_format(text, values):
    """A format! string with {name} replaced ({{ and }} are braces)."""
    def one(m):
        return {"{{": "{", "}}": "}"}.get(m.group(0)) or values.get(m.group(1), "0")
    return re.sub(r"\{\{|\}\}|\{(\w+)\}", one, text)


def flatten(node, prefix=""):
    """The field names Logs Insights discovers in a JSON log event: every key,
    nested ones joined with dots."""
    names = set()
    for key, value in node.items():
        names.add(prefix + key)
        if isinstance(value, dict):
            names |= flatten(value, f"{prefix}{key}.")
    return names


def emf_record_fields():
    """Every field of the EMF record the API function writes per request,
    read from src/telemetry.rs: the format strings of render_directives and
    Metrics::emit, rendered with stand-in values (every value 0, the metric
    directives an empty list, the level member present) and parsed as the
    JSON they produce."""
    with open(TELEMETRY) as f:
        source = f.read()
    directives = render_format(rust_format_literal(source, "render_directives"), {"directives": "[]"})
    # `level` is a whole `"level":"...",` member (or nothing), not a value.
    record = json.loads(render_format(rust_format_literal(source, "emit"),
                                      {"directives": directives, "level": '"level":"INFO",'}))
    return flatten(record)


EMF_FIELDS = emf_record_fields()
# Logs Insights words that are not fields: commands, keywords. A function is
# a word followed by "(", an alias the word after "as".
INSIGHTS_COMMANDS = {"SOURCE", "fields", "filter", "stats", "sort", "limit", "display"}
INSIGHTS_KEYWORDS = {"as", "by", "asc", "desc", "and", "or", "not", "in", "like"}


def query_fields(query):
    """The log fields a Logs Insights query names."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "''", query)  # literals are not fields
    aliases = set(re.findall(r"\bas\s+([A-Za-z_]\w*)", text))
    fields = set()
    for m in re.finditer(r"@?[A-Za-z_][\w.]*", text):
        word = m.group(0)
        called = text[m.end():].lstrip().startswith("(")
        if called or word in INSIGHTS_COMMANDS or word in INSIGHTS_KEYWORDS or word in aliases:
            continue
        fields.add(word)
    return fields


def unknown_fields(query):
    return query_fields(query) - EMF_FIELDS


def dashboard_widgets(stack):
    """The dashboard's widgets as CloudWatch would receive them, with the
    Fn::Sub values of one deployment."""
    body = stack.props("TenantDashboard")["DashboardBody"]
    assert set(body) == {"Fn::Sub"} and isinstance(body["Fn::Sub"], str), body
    text = body["Fn::Sub"]
    names = set(re.findall(r"\$\{([^}]+)\}", text))
    assert names <= {"AWS::Region", "FunctionLogs"}, names
    values = {"AWS::Region": PSEUDO["AWS::Region"], "FunctionLogs": FUNCTION_LOG_GROUP}
    for name, value in values.items():
        text = text.replace("${%s}" % name, value)
    return json.loads(text)["widgets"]


def query_of(widget):
    """A widget's query without its SOURCE clause (checked separately)."""
    query = widget["properties"]["query"]
    source = f"SOURCE '{FUNCTION_LOG_GROUP}' | "
    assert query.startswith(source) and query.count("SOURCE") == 1, query
    return query[len(source):]


def readme_metering_queries():
    """The Logs Insights queries of README's "Metering" section: every fenced
    block in it."""
    with open(README) as f:
        text = f.read()
    section = text[text.index("\n## Metering\n"):]
    section = section[:section.index("\n## ", 1)]
    return [b.strip() for b in re.findall(r"```[a-z]*\n(.*?)```", section, re.S)]


class MeteringDashboardTest(unittest.TestCase):
    def test_emf_fields_are_read_from_the_code(self):
        for field in ("TenantId", "Service", "Requests", "Errors", "ServerErrors", "Throttled", "Forbidden",
                      "Latency", "DatabaseTime", "Rows", "ResponseBytes", "MemoryMB", "Route", "StatusCode",
                      "RequestId", "_aws.Timestamp"):
            self.assertIn(field, EMF_FIELDS)
        # The request log line's names are not the EMF record's.
        for field in ("tenant_id", "latency_ms", "db_ms", "Timestamp", "Tenant"):
            self.assertNotIn(field, EMF_FIELDS)

    def test_field_check_catches_a_field_the_record_does_not_write(self):
        self.assertEqual(unknown_fields("filter Throttles > 0 | stats sum(Throttles) as t by TenantId | sort t desc"),
                         {"Throttles"})
        self.assertEqual(unknown_fields("stats pct(LatencyMs, 99) as p99 by tenant_id"), {"LatencyMs", "tenant_id"})
        self.assertEqual(unknown_fields("fields Latency * MemoryMB / 1024 as x | stats sum(x) by TenantId"), set())
        self.assertEqual(query_fields("filter Route = 'Latency' | display @timestamp"), {"Route", "@timestamp"})

    def test_dashboard_exists_in_every_combination_and_reads_the_api_functions_log_group(self):
        for overrides, s in ALL_STACKS:
            with self.subTest(overrides=sorted(overrides)):
                res = s.resources["TenantDashboard"]
                self.assertEqual(res["Type"], "AWS::CloudWatch::Dashboard")
                self.assertNotIn("Condition", res)
                self.assertEqual(res["Properties"]["DashboardName"], {"Fn::Sub": "${AWS::StackName}-tenants"})
                # The group the dashboard reads is the one the function writes to.
                self.assertEqual(s.props("FunctionLogs")["LogGroupName"],
                                 {"Fn::Sub": "/aws/lambda/${TenantUsersFunction}"})
                self.assertNotIn("LogGroup", s.props("TenantUsersFunction").get("LoggingConfig", {}))
                widgets = dashboard_widgets(s)
                self.assertGreaterEqual(len(widgets), 5)
                for w in widgets:
                    self.assertEqual(w["type"], "log")
                    self.assertEqual(w["properties"]["region"], PSEUDO["AWS::Region"])
                    query_of(w)

    def test_dashboard_queries_name_only_fields_the_emf_record_writes(self):
        for w in dashboard_widgets(DEFAULT):
            with self.subTest(widget=w["properties"]["title"]):
                query = query_of(w)
                self.assertEqual(unknown_fields(query), set(), query)
                self.assertIn("TenantId", query_fields(query), "every widget is about tenants")

    def test_readme_metering_queries_name_only_fields_the_emf_record_writes(self):
        queries = readme_metering_queries()
        self.assertGreaterEqual(len(queries), 2)
        for query in queries:
            with self.subTest(query=query):
                self.assertEqual(unknown_fields(query), set())

    def test_dashboard_ranks_tenants_by_requests_throttles_p99_forbidden_and_usage(self):
        queries = [" ".join(query_of(w).split()) for w in dashboard_widgets(DEFAULT)]

        def one(*parts):
            hits = [q for q in queries if all(p in q for p in parts)]
            self.assertEqual(len(hits), 1, f"{parts} in {queries}")
            return hits[0]

        one("sum(Requests) as requests", "by TenantId", "sort requests desc")
        one("sum(Throttled) as throttled", "by TenantId", "sort throttled desc")
        one("pct(Latency, 99) as p99_ms", "by TenantId", "sort p99_ms desc")
        one("sum(Forbidden) as forbidden", "by TenantId", "sort forbidden desc")
        # GB-seconds by handler time (ms x MB / 1024 / 1000) and database
        # time, per tenant and for all tenants: share = row / total.
        usage = "fields Latency * MemoryMB / 1024 / 1000 as gb_s, DatabaseTime / 1000 as db_s"
        stats = "stats sum(gb_s) as gb_seconds, sum(db_s) as db_seconds, sum(Requests) as requests"
        one(usage, stats + " by TenantId")
        total = [q for q in queries if usage in q and q.endswith(stats)]
        self.assertEqual(len(total), 1, queries)
        # README's share query is the dashboard's.
        self.assertTrue(any(usage in " ".join(q.split()) for q in readme_metering_queries()))


# --- PoolJwksFunction's code, run in-process ----------------------------------
REGION = "us-east-1"
POOL = "us-east-1_AbCdEfGhI"
ENV = {"AWS_REGION": REGION, "POOL_REGION": REGION, "DNS_SUFFIX": "amazonaws.com", "POOL_ID": POOL}
JWKS_URL = f"https://cognito-idp.us-east-1.amazonaws.com/{POOL}/.well-known/jwks.json"
RESPONSE_BUCKET = "cloudformation-custom-resource-response-useast1"
SIGNED = ("?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20261201T000000Z&X-Amz-SignedHeaders=host"
          "&X-Amz-Expires=7200&X-Amz-Credential=AKIAEXAMPLE%2F20261201%2Fus-east-1%2Fs3%2Faws4_request"
          "&X-Amz-Signature=0123456789abcdef")
RESPONSE_PATH = "/arn%3Aaws%3Acloudformation%3Aus-east-1%3A123456789012%3Astack/tenant-users-dev/1%7CPoolJwks%7Cabc"
RESPONSE_URL = f"https://{RESPONSE_BUCKET}.s3.amazonaws.com{RESPONSE_PATH}{SIGNED}"


def b64url(number, length):
    return base64.urlsafe_b64encode(number.to_bytes(length, "big")).rstrip(b"=").decode()


def rsa_jwk(kid, bits=2048, **extra):
    """A JWK shaped like Cognito's (a random odd modulus of that size)."""
    n = secrets.randbits(bits) | (1 << (bits - 1)) | 1
    return {"alg": "RS256", "e": "AQAB", "kid": kid, "kty": "RSA", "n": b64url(n, bits // 8), "use": "sig", **extra}


def cognito_jwks():
    return {"keys": [rsa_jwk("4tQ2+ExampleKid1+abcdefghijklmnopqrstuv0123=="),
                     rsa_jwk("9xZ7/ExampleKid2/abcdefghijklmnopqrstuv0123==")]}


class FakeContext:
    def get_remaining_time_in_millis(self):
        return 30_000


def event(kind="Create", url=RESPONSE_URL, **properties):
    ev = {"RequestType": kind, "ResponseURL": url, "LogicalResourceId": "PoolJwks",
          "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/tenant-users-dev/0a1b2c3d-1111-2222-3333-444455556666",
          "RequestId": "5e6f7a8b-1111-2222-3333-444455556666", "ResourceType": "Custom::TenantUsersPoolJwks",
          "ResourceProperties": {"ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:f", "UserPoolId": POOL,
                                 **properties}}
    if kind != "Create":
        ev["PhysicalResourceId"] = f"tenant-users-pool-jwks-{POOL}"
    return ev


class FakeSocket:
    def __init__(self):
        self.timeouts = []

    def settimeout(self, seconds):
        self.timeouts.append(seconds)


class FakeResponse:
    def __init__(self, status=200, chunks=(), headers=None):
        self.status, self.chunks, self.headers = status, list(chunks), headers or {}
        self.closed = False

    def getheader(self, name):
        return self.headers.get(name)

    def read1(self, n):
        if not self.chunks:
            return b""
        chunk = self.chunks.pop(0)
        if len(chunk) > n:
            chunk, rest = chunk[:n], chunk[n:]
            self.chunks.insert(0, rest)
        return chunk

    def read(self, n=-1):
        return b""

    def close(self):
        self.closed = True


def fake_connections(*responses):
    """An HTTPSConnection stand-in answering with the given responses (an
    exception is raised instead), recording every connection."""
    made = []
    queue = list(responses)

    class Connection:
        def __init__(self, host, port=None, timeout=None, context=None):
            self.host, self.port, self.timeout, self.context = host, port, timeout, context
            self.sock, self.requests, self.closed = FakeSocket(), [], False
            made.append(self)

        def request(self, method, target, body=None, headers=None):
            self.requests.append((method, target, body, dict(headers or {})))

        def getresponse(self):
            answer = queue.pop(0)
            if isinstance(answer, BaseException):
                raise answer
            return answer

        def close(self):
            self.closed = True

    return Connection, made


class PoolJwksCodeTest(unittest.TestCase):
    """The fetcher's own rules, from the code in the template."""

    def setUp(self):
        self.m = pool_jwks_module()
        # Its log lines (the root logger in Lambda) stay out of the test output.
        self.m.LOG = logging.getLogger("template_test.pool_jwks")
        self.m.LOG.propagate = False
        self.m.LOG.addHandler(logging.NullHandler())

    def test_code_uses_the_standard_library_only_and_has_the_handler(self):
        tree = ast.parse(RAW["Resources"]["PoolJwksFunction"]["Properties"]["InlineCode"])
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        self.assertTrue(imported)
        self.assertLessEqual(imported, set(sys.stdlib_module_names))
        self.assertNotIn("urllib.request", RAW["Resources"]["PoolJwksFunction"]["Properties"]["InlineCode"])
        self.assertTrue(callable(self.m.handler))
        self.assertEqual((self.m.MAX_BODY, self.m.FETCH_SECONDS), (64 * 1024, 5.0))

    def test_response_url_must_be_cloudformations_bucket_of_the_region(self):
        check = self.m.response_url_is_cloudformations
        good = [
            RESPONSE_URL,
            f"https://{RESPONSE_BUCKET}.s3.us-east-1.amazonaws.com{RESPONSE_PATH}{SIGNED}",
            f"https://{RESPONSE_BUCKET}.s3-us-east-1.amazonaws.com{RESPONSE_PATH}{SIGNED}",
            f"https://{RESPONSE_BUCKET}.s3.amazonaws.com:443{RESPONSE_PATH}{SIGNED}",
            f"https://{RESPONSE_BUCKET.upper()}.S3.AMAZONAWS.COM{RESPONSE_PATH}{SIGNED}",
            f"https://{RESPONSE_BUCKET}.s3.amazonaws.com/x?AWSAccessKeyId=AKIA&Expires=1&Signature=abc%2B",
        ]
        for url in good:
            with self.subTest(url=url):
                self.assertIsNone(check(url, REGION))
        self.assertIsNone(check("https://cloudformation-custom-resource-response-cnnorth1.s3.cn-north-1.amazonaws.com.cn"
                                f"/x{SIGNED}", "cn-north-1"))
        bucket = f"{RESPONSE_BUCKET}.s3.amazonaws.com"
        hostile = [
            f"http://{bucket}{RESPONSE_PATH}{SIGNED}",
            f"ftp://{bucket}/x{SIGNED}",
            f"https://evil.example{RESPONSE_PATH}{SIGNED}",
            f"https://{bucket}.evil.example{RESPONSE_PATH}{SIGNED}",
            f"https://evil-{bucket}/x{SIGNED}",
            f"https://cloudformation-custom-resource-response-uswest2.s3.amazonaws.com/x{SIGNED}",
            f"https://{RESPONSE_BUCKET}.s3.us-west-2.amazonaws.com/x{SIGNED}",
            f"https://{RESPONSE_BUCKET}.s3-website-us-east-1.amazonaws.com/x{SIGNED}",
            f"https://{RESPONSE_BUCKET}.s3.amazonaws.com.evil.example/x{SIGNED}",
            f"https://{RESPONSE_BUCKET}.s3.amazonaws.com./x{SIGNED}",
            f"https://{RESPONSE_BUCKET}x.s3.amazonaws.com/x{SIGNED}",
            f"https://s3.amazonaws.com/{RESPONSE_BUCKET}/x{SIGNED}",
            # user info, either way round, and a backslash that parsers disagree on
            f"https://{bucket}@evil.example/x{SIGNED}",
            f"https://user:pass@{bucket}/x{SIGNED}",
            f"https://evil.example\\@{bucket}/x{SIGNED}",
            f"https://{bucket}\\@evil.example/x{SIGNED}",
            f"https://{bucket}:8443/x{SIGNED}",
            f"https://{bucket}:/x{SIGNED}",
            f"https://{bucket}:443@evil.example/x{SIGNED}",
            f"https://{bucket.replace('.', '%2e')}/x{SIGNED}",
            f"https://{bucket.replace('a', 'а')}/x{SIGNED}",
            f"https://{bucket}/x{SIGNED}\r\nHost: evil.example",
            f"https://{bucket}/x {SIGNED}",
            "https://52.216.0.1/x" + SIGNED,
            f"https://[::1]/x{SIGNED}",
            # not pre-signed
            f"https://{bucket}{RESPONSE_PATH}",
            f"https://{bucket}{RESPONSE_PATH}?X-Amz-Signature=",
            f"https://{bucket}{RESPONSE_PATH}?X-Amz-Algorithm=AWS4-HMAC-SHA256#X-Amz-Signature=abc",
            f"https://{bucket}{RESPONSE_PATH}?x-amz-signature-not=abc",
            "",
            None,
            42,
        ]
        for url in hostile:
            with self.subTest(url=url):
                with self.assertRaises(ValueError):
                    check(url, REGION)
        for region in (None, "", "us-east-1/../x", "evil"):
            with self.subTest(region=region), self.assertRaises(ValueError):
                check(RESPONSE_URL, region)

    def test_the_only_url_fetched_is_built_from_its_environment(self):
        self.assertEqual(self.m.settings(ENV), (JWKS_URL, POOL))
        china = {**ENV, "AWS_REGION": "cn-north-1", "POOL_REGION": "cn-north-1", "DNS_SUFFIX": "amazonaws.com.cn",
                 "POOL_ID": "cn-north-1_AbCdEfGhI"}
        self.assertEqual(self.m.settings(china)[0],
                         "https://cognito-idp.cn-north-1.amazonaws.com.cn/cn-north-1_AbCdEfGhI/.well-known/jwks.json")
        hostile = [
            {},
            {**ENV, "POOL_REGION": "us-west-2"},
            {**ENV, "AWS_REGION": "us-west-2"},
            {**ENV, "POOL_REGION": "evil.example/", "AWS_REGION": "evil.example/"},
            {**ENV, "DNS_SUFFIX": "evil.example"},
            {**ENV, "DNS_SUFFIX": "amazonaws.com.evil.example"},
            {**ENV, "POOL_ID": ""},
            {**ENV, "POOL_ID": "us-west-2_AbCdEfGhI"},
            {**ENV, "POOL_ID": "us-east-1_Ab/../../x"},
            {**ENV, "POOL_ID": "us-east-1_AbC?x=1"},
            {**ENV, "POOL_ID": "us-east-1_AbC@evil.example"},
        ]
        for env in hostile:
            with self.subTest(env=env), self.assertRaises(ValueError):
                self.m.settings(env)
        # The event may repeat the pool id, and say nothing else.
        self.assertIsNone(self.m.check_properties({"ServiceToken": "arn", "UserPoolId": POOL}, POOL))
        self.assertIsNone(self.m.check_properties({"ServiceToken": "arn"}, POOL))
        for properties in ({"UserPoolId": "us-east-1_Other"}, {"UserPoolId": POOL, "JwksUrl": "https://evil.example/"},
                           {"Url": JWKS_URL}, [], "x"):
            with self.subTest(properties=properties), self.assertRaises(ValueError):
                self.m.check_properties(properties, POOL)

    def test_key_set_is_checked_and_made_compact(self):
        jwks = cognito_jwks()
        body = json.dumps(jwks, indent=2).encode()
        document = self.m.jwks_document(body)
        self.assertEqual(json.loads(document), jwks)
        self.assertNotIn(" ", document)
        self.assertNotIn("\n", document)
        self.assertLess(len(document), 1100)
        # The same keys always give the same text (no needless update of
        # the API function), and only the members a verifier reads.
        shuffled = {"keys": [dict(reversed(list(k.items()))) for k in jwks["keys"]]}
        self.assertEqual(self.m.jwks_document(json.dumps(shuffled).encode()), document)
        extra = {"keys": [{**k, "x5c": ["MIIB..."], "note": "x"} for k in jwks["keys"]], "other": 1}
        self.assertEqual(self.m.jwks_document(json.dumps(extra).encode()), document)
        bare = {"keys": [{m: k[m] for m in ("kty", "kid", "n", "e")} for k in jwks["keys"]]}
        self.assertEqual(json.loads(self.m.jwks_document(json.dumps(bare).encode())), bare)

    def test_key_set_refuses_what_is_not_rsa_signing_keys(self):
        good = rsa_jwk("kid-1")
        small = rsa_jwk("kid-small", bits=1024)
        hostile = {
            "not JSON": b"<html>",
            "NaN": b'{"keys":[NaN]}',
            "not UTF-8": b'{"keys":["\xff"]}',
            "repeated member": b'{"keys":[],"keys":[{}]}',
            "deep": b"[" * 100_000 + b"]" * 100_000,
            "a list": json.dumps([good]).encode(),
            "no keys": b"{}",
            "empty keys": b'{"keys":[]}',
            "keys not a list": json.dumps({"keys": good}).encode(),
            "a key not an object": json.dumps({"keys": ["x"]}).encode(),
            "EC key": json.dumps({"keys": [{**good, "kty": "EC"}]}).encode(),
            "oct key": json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "x"}]}).encode(),
            "no kty": json.dumps({"keys": [{m: v for m, v in good.items() if m != "kty"}]}).encode(),
            "no n": json.dumps({"keys": [{m: v for m, v in good.items() if m != "n"}]}).encode(),
            "no e": json.dumps({"keys": [{m: v for m, v in good.items() if m != "e"}]}).encode(),
            "no kid": json.dumps({"keys": [{m: v for m, v in good.items() if m != "kid"}]}).encode(),
            "empty kid": json.dumps({"keys": [{**good, "kid": ""}]}).encode(),
            "kid not a string": json.dumps({"keys": [{**good, "kid": 7}]}).encode(),
            "kid with quotes": json.dumps({"keys": [{**good, "kid": 'a"b'}]}).encode(),
            "kid with a space": json.dumps({"keys": [{**good, "kid": "a b"}]}).encode(),
            "repeated kid": json.dumps({"keys": [good, {**rsa_jwk("kid-1")}]}).encode(),
            "n not base64url": json.dumps({"keys": [{**good, "n": good["n"][:-2] + "+/"}]}).encode(),
            "e not base64url": json.dumps({"keys": [{**good, "e": "AQ=B"}]}).encode(),
            "1024-bit key": json.dumps({"keys": [small]}).encode(),
            "even exponent": json.dumps({"keys": [{**good, "e": b64url(65536, 3)}]}).encode(),
            "exponent 1": json.dumps({"keys": [{**good, "e": "AQ"}]}).encode(),
            "HS256": json.dumps({"keys": [{**good, "alg": "HS256"}]}).encode(),
            "none": json.dumps({"keys": [{**good, "alg": "none"}]}).encode(),
            "encryption key": json.dumps({"keys": [{**good, "use": "enc"}]}).encode(),
            "too many keys": json.dumps({"keys": [rsa_jwk(f"k{i}") for i in range(9)]}).encode(),
            "over 64 KiB": json.dumps({"keys": [good], "pad": "x" * 70_000}).encode(),
            "not bytes": json.dumps({"keys": [good]}),
        }
        for name, body in hostile.items():
            with self.subTest(name=name), self.assertRaises(ValueError):
                self.m.jwks_document(body)
        # Valid keys, but more than JWT_JWKS may hold: refused, saying why.
        big = json.dumps({"keys": [rsa_jwk(f"k{i}", bits=4096) for i in range(4)]}).encode()
        with self.assertRaises(ValueError) as refused:
            self.m.jwks_document(big)
        self.assertIn("3000", str(refused.exception))
        self.assertIn("environment", str(refused.exception))

    def test_body_is_capped_in_size_and_time(self):
        sock = FakeSocket()
        body = self.m.read_capped(FakeResponse(chunks=[b"ab", b"cd"]), sock, 10, deadline=5.0, clock=lambda: 1.0)
        self.assertEqual(body, b"abcd")
        self.assertEqual(sock.timeouts, [4.0, 4.0, 4.0])
        with self.assertRaises(ValueError):
            self.m.read_capped(FakeResponse(chunks=[b"x" * 6, b"y" * 6]), FakeSocket(), 10, 5.0, lambda: 1.0)
        ticks = iter([1.0, 4.0, 6.0])
        with self.assertRaises(ValueError):
            self.m.read_capped(FakeResponse(chunks=[b"a", b"b", b"c"]), FakeSocket(), 10, 5.0, lambda: next(ticks))

    def test_fetch_gets_only_that_url_and_follows_no_redirect(self):
        body = json.dumps(cognito_jwks()).encode()
        connection, made = fake_connections(FakeResponse(chunks=[body], headers={"Content-Length": str(len(body))}))
        with mock.patch.object(self.m, "HTTPSConnection", connection):
            self.assertEqual(self.m.fetch_jwks(JWKS_URL), body)
        (conn,) = made
        self.assertEqual((conn.host, conn.port), ("cognito-idp.us-east-1.amazonaws.com", 443))
        self.assertLessEqual(conn.timeout, 5.0)
        self.assertTrue(conn.context.check_hostname)
        (request,) = conn.requests
        self.assertEqual(request[:2], ("GET", f"/{POOL}/.well-known/jwks.json"))
        self.assertTrue(all(0 < t <= 5.0 for t in conn.sock.timeouts))
        self.assertTrue(conn.closed)
        refused = [
            FakeResponse(status=302, headers={"Location": "https://evil.example/jwks.json"}),
            FakeResponse(status=404),
            FakeResponse(headers={"Content-Length": str(70_000)}),
            FakeResponse(headers={"Content-Length": "-1"}),
            FakeResponse(chunks=[b"x" * 16384] * 5),
        ]
        for response in refused:
            connection, made = fake_connections(response)
            with self.subTest(status=response.status, headers=response.headers), \
                    mock.patch.object(self.m, "HTTPSConnection", connection), self.assertRaises(ValueError):
                self.m.fetch_jwks(JWKS_URL)
            self.assertEqual(len(made), 1)
            self.assertEqual(len(made[0].requests), 1)

    def test_answer_is_put_to_the_response_url_with_an_empty_content_type(self):
        connection, made = fake_connections(OSError("reset"), FakeResponse(status=503), FakeResponse(status=200))
        with mock.patch.object(self.m, "HTTPSConnection", connection), mock.patch.object(self.m.time, "sleep"):
            self.assertTrue(self.m.put_answer(RESPONSE_URL, b"{}", deadline=self.m.time.monotonic() + 30))
        self.assertEqual(len(made), 3)
        for conn in made:
            self.assertEqual((conn.host, conn.port), (f"{RESPONSE_BUCKET}.s3.amazonaws.com", 443))
            self.assertEqual(conn.requests, [("PUT", RESPONSE_PATH + SIGNED, b"{}", {"Content-Type": ""})])
        connection, made = fake_connections(*[FakeResponse(status=403)] * 3)
        with mock.patch.object(self.m, "HTTPSConnection", connection), mock.patch.object(self.m.time, "sleep"):
            self.assertFalse(self.m.put_answer(RESPONSE_URL, b"{}", deadline=self.m.time.monotonic() + 30))
        self.assertEqual(len(made), 3)

    def run_handler(self, ev, fetch=None, env=ENV):
        """(what the handler returned, the answers it PUT, the URLs it fetched)."""
        answers, fetched = [], []

        def fake_fetch(url, budget):
            fetched.append(url)
            self.assertLessEqual(budget, 5.0)
            if isinstance(fetch, BaseException):
                raise fetch
            return fetch if fetch is not None else json.dumps(cognito_jwks()).encode()

        def fake_put(url, body, deadline):
            answers.append((url, json.loads(body), len(body)))
            return True

        with mock.patch.object(self.m, "fetch_jwks", fake_fetch), mock.patch.object(self.m, "put_answer", fake_put):
            result = self.m.handler(ev, FakeContext(), env=env)
        for url, answer, size in answers:
            self.assertEqual(url, RESPONSE_URL)
            self.assertLessEqual(size, 4096)
            for key in ("Status", "Reason", "PhysicalResourceId", "StackId", "RequestId", "LogicalResourceId"):
                self.assertIn(key, answer)
            self.assertEqual((answer["StackId"], answer["RequestId"]), (ev["StackId"], ev["RequestId"]))
        return result, [a for _, a, _ in answers], fetched

    def test_create_and_update_answer_the_document(self):
        for kind in ("Create", "Update"):
            with self.subTest(kind=kind):
                _, (answer,), fetched = self.run_handler(event(kind))
                self.assertEqual(fetched, [JWKS_URL])
                self.assertEqual(answer["Status"], "SUCCESS", answer["Reason"])
                self.assertEqual(answer["PhysicalResourceId"], f"tenant-users-pool-jwks-{POOL}")
                self.assertEqual(json.loads(answer["Data"]["Document"])["keys"][0]["kty"], "RSA")
                self.assertLessEqual(len(answer["Data"]["Document"]), 3000)

    def test_delete_succeeds_without_work(self):
        # Only Lambda's own AWS_REGION (to check the ResponseURL) is read.
        _, (answer,), fetched = self.run_handler(event("Delete"), env={"AWS_REGION": REGION})
        self.assertEqual(fetched, [])
        self.assertEqual(answer["Status"], "SUCCESS")
        self.assertEqual(answer["PhysicalResourceId"], f"tenant-users-pool-jwks-{POOL}")
        self.assertFalse(answer["Data"])

    def test_every_failure_is_answered_failed(self):
        cases = {
            "fetch raises": (event(), TimeoutError("timed out"), ENV),
            "fetch fails": (event(), ValueError("cognito-idp answered HTTP 404"), ENV),
            "not a key set": (event(), b"<html>", ENV),
            "unexpected error": (event(), RuntimeError("boom"), ENV),
            "unknown request": (event("Replace"), None, ENV),
            "no configuration": (event(), None, {"AWS_REGION": REGION}),
            "update of another pool": (event("Update", UserPoolId="us-east-1_Other"), None, ENV),
            "a URL in the event": (event(JwksUrl="https://evil.example/jwks.json"), None, ENV),
        }
        for name, (ev, fetch, env) in cases.items():
            with self.subTest(name=name):
                _, (answer,), fetched = self.run_handler(ev, fetch, env)
                self.assertEqual(answer["Status"], "FAILED")
                self.assertTrue(answer["Reason"])
                self.assertFalse(answer.get("Data"))
                # Nothing fetched when the event names anything but our pool.
                if name in ("update of another pool", "a URL in the event", "unknown request", "no configuration"):
                    self.assertEqual(fetched, [])
                else:
                    self.assertEqual(fetched, [JWKS_URL])
                # An Update that fails keeps its id: no replacement.
                if ev["RequestType"] == "Update":
                    self.assertEqual(answer["PhysicalResourceId"], ev["PhysicalResourceId"])
        # Even an error outside every step is answered.
        with mock.patch.object(self.m, "outcome", side_effect=KeyError("x")):
            _, (answer,), _ = self.run_handler(event())
        self.assertEqual(answer["Status"], "FAILED")
        # An answer CloudFormation would refuse (over 4096 bytes) becomes a FAILED one that fits.
        answer, body = self.m.answer_for(event(), "SUCCESS", "ok", "id", {"Document": "x" * 4000})
        self.assertEqual(answer["Status"], "FAILED")
        self.assertLessEqual(len(body), 4096)
        self.assertIn("4096", answer["Reason"])

    def test_untrusted_response_url_is_never_contacted(self):
        for kind in ("Create", "Update", "Delete"):
            for url in (f"https://evil.example/x{SIGNED}", f"https://{RESPONSE_BUCKET}.s3.amazonaws.com/x",
                        f"http://{RESPONSE_BUCKET}.s3.amazonaws.com/x{SIGNED}", None):
                with self.subTest(kind=kind, url=url):
                    result, answers, fetched = self.run_handler(event(kind, url=url))
                    self.assertEqual((answers, fetched), ([], []))
                    self.assertIs(result["answered"], False)
        # Not an event, or one without a ResponseURL: nothing to answer to.
        for ev in (None, [], "x", {"RequestType": "Create"}):
            with self.subTest(event=ev):
                with mock.patch.object(self.m, "put_answer") as put, mock.patch.object(self.m, "fetch_jwks") as get:
                    result = self.m.handler(ev, FakeContext(), env=ENV)
                put.assert_not_called()
                get.assert_not_called()
                self.assertIs(result["answered"], False)


if __name__ == "__main__":
    # `--write-expanded PATH` also saves the expanded template, so the policy
    # scanner reads the resources SAM generates (stage, permissions, alias).
    args = sys.argv[1:]
    if args[:1] == ["--write-expanded"]:
        with open(args[1], "w") as out:
            json.dump(EXPANDED, out, indent=1)
        args = args[2:]
    unittest.main(argv=[sys.argv[0], "-v", *args])
