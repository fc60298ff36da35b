"""The event names the platform, the SDK, the demo, the rules and the API agree on.

The contract lets any name through; these are the ones the dashboards, default rules and
REST endpoints read. Values and labels:

============================  ================  ============================================
name                          type              value / labels
============================  ================  ============================================
``http_request``              performance       duration (s); endpoint, method, status, service
``db_query``                  performance       duration (s); operation, service
``external_api``              performance       duration (s); provider, operation
``subscription_payment``      revenue           amount; plan, currency, kind (new|recurring)
``signatures_created``        usage             count; level (simple|advanced|qualified)
``documents_uploaded``        usage             count
``quota_utilization``         usage             percent of the tenant's quota; resource
``user_signup``               business_event    1; user = the new user
``user_login``                business_event    1; user
``auth_failed``               business_event    1; reason
``security_violation``        business_event    1; kind
``subscription_active``       business_event    number of active subscriptions; plan
<feature name>                feature_usage     1 per use; feature label optional
``cpu_usage``                 system            percent; host
``memory_usage``              system            percent; host
``disk_usage``                system            percent; host, mount
``network_bytes_sent``        system            bytes since the previous sample; host
``network_bytes_recv``        system            bytes since the previous sample; host
============================  ================  ============================================
"""

from __future__ import annotations

HTTP_REQUEST = "http_request"
DB_QUERY = "db_query"
EXTERNAL_API = "external_api"
SUBSCRIPTION_PAYMENT = "subscription_payment"
SIGNATURES_CREATED = "signatures_created"
DOCUMENTS_UPLOADED = "documents_uploaded"
QUOTA_UTILIZATION = "quota_utilization"
USER_SIGNUP = "user_signup"
USER_LOGIN = "user_login"
AUTH_FAILED = "auth_failed"
SECURITY_VIOLATION = "security_violation"
SUBSCRIPTION_ACTIVE = "subscription_active"
CPU_USAGE = "cpu_usage"
MEMORY_USAGE = "memory_usage"
DISK_USAGE = "disk_usage"
NETWORK_BYTES_SENT = "network_bytes_sent"
NETWORK_BYTES_RECV = "network_bytes_recv"
